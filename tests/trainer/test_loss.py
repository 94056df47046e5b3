"""trainer.loss: the loss over answer tokens, packed or padded, chunked or whole."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import model_examples, tiny_llama

from ftcore import policy
from trainer.batching import pack
from trainer.collate import collate
from trainer.loss import CausalLMLoss, answer_cross_entropy


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_each_example_alone(attn):
    model = tiny_llama(attn)
    examples = model_examples()
    (row,) = pack(examples, max_len=64)
    with torch.no_grad():
        packed = model.model(**{k: v for k, v in collate([row], 0, attn).items() if k != "labels"}).last_hidden_state[0]
        start = 0
        for ex in examples:
            alone = model.model(input_ids=ex.input_ids.long()[None]).last_hidden_state[0]
            # Token by token: every position sees exactly its own example's prefix.
            torch.testing.assert_close(packed[start : start + len(ex)], alone, atol=1e-5, rtol=1e-5)
            start += len(ex)

        loss = CausalLMLoss(model)
        packed_loss = loss(**collate([row], 0, attn))
        alone_loss = sum(loss(**collate([ex], 0, attn)) for ex in examples)
        padded_loss = loss(**collate(examples, 0, attn))  # unpacked batch, padded to the longest
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_loss, alone_loss, atol=1e-5, rtol=1e-5)


def test_loss_counts_only_answer_tokens_and_matches_the_models_own():
    model = tiny_llama()
    examples = model_examples()
    batch = collate(examples, 0)
    with torch.no_grad():
        ours = CausalLMLoss(model)(**batch)
        reference = model(**batch).loss  # transformers: mean over the same label positions
    n_answer = sum(ex.answer_tokens for ex in examples)
    assert n_answer == 3 + 2 + 4 - 3 + 3  # the first answer token of each is predicted, the last label is not shifted out
    torch.testing.assert_close(ours / n_answer, reference, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_matches_one_shot(monkeypatch):
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    config = type("C", (), {})()
    whole = answer_cross_entropy(head, hidden, targets, config)
    (g_whole,) = torch.autograd.grad(whole, hidden)
    monkeypatch.setattr(policy, "LOSS_CHUNK_TOKENS", 8)
    chunked = answer_cross_entropy(head, hidden, targets, config)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(whole, chunked)
    torch.testing.assert_close(g_whole, g_chunked)
