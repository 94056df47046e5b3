"""trainer.attention: padding-free sdpa gives the padded loss and gradients, and stays out of checkpoints."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import model_examples, tiny_llama

from trainer.batching import pack
from trainer.collate import collate
from trainer.loss import CausalLMLoss
from trainer.samples import Sample


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention
def test_padding_free_row_gives_the_padded_loss_and_gradients(kv_heads):
    from trainer import attention

    examples = model_examples()
    examples.append(pack(model_examples()[:2], max_len=64)[0])  # a packed row inside a micro batch
    whole = torch.randint(3, 384, (6,), dtype=torch.int32)
    examples.append(Sample(whole, whole.clone(), (6,)))  # loss on every token, the first included

    def loss_and_grads(attn, padding_free):
        model = tiny_llama(attn, num_key_value_heads=kv_heads)
        loss = CausalLMLoss(model)(**collate(examples, 0, "sdpa", padding_free=padding_free))
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    padded_loss, padded_grads = loss_and_grads("sdpa", padding_free=False)
    free_loss, free_grads = loss_and_grads(attention.register(), padding_free=True)
    torch.testing.assert_close(free_loss, padded_loss, atol=1e-5, rtol=1e-5)
    for free, padded in zip(free_grads, padded_grads, strict=True):
        torch.testing.assert_close(free, padded, atol=1e-5, rtol=1e-4)


def test_padding_free_attention_is_not_written_to_checkpoints(tmp_path):
    from trainer import attention

    tiny_llama(attention.register()).save_pretrained(tmp_path)
    assert attention.NAME not in (tmp_path / "config.json").read_text()


def test_grouped_query_attention_copies_no_key_value_heads(monkeypatch):
    """enable_gqa: each key/value head serves its query heads where it is, no repeat_interleave."""
    from trainer import attention

    def refuse(*args, **kwargs):
        raise AssertionError("key/value heads were copied")

    monkeypatch.setattr(torch, "repeat_interleave", refuse)
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", refuse)
    monkeypatch.setattr(torch.Tensor, "expand", refuse)  # transformers' repeat_kv expands, then reshapes
    model = tiny_llama(attention.register(), num_key_value_heads=2)
    CausalLMLoss(model)(**collate(model_examples(), 0, "sdpa", padding_free=True)).backward()


def test_the_kernel_is_a_variable_length_one_where_the_library_has_it(monkeypatch):
    from types import SimpleNamespace

    from trainer import attention

    gpu = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16)
    have = {"flash_attn": False, "torch.nn.attention.varlen": True}
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object() if have.get(name) else None)
    assert attention.kernel(gpu) == "torch_varlen"
    have["flash_attn"] = True
    assert attention.kernel(gpu) == "flash_attn"
    # fp32 on a GPU (no variable-length kernel takes it): one masked SDPA call, no host sync;
    # CPUs: causal SDPA per example (the host read is free there)
    assert attention.kernel(SimpleNamespace(is_cuda=True, dtype=torch.float32)) == "sdpa_masked"
    assert attention.kernel(SimpleNamespace(is_cuda=False, dtype=torch.bfloat16)) == "sdpa_per_example"


def test_no_python_list_reaches_the_layers_of_a_padding_free_row(monkeypatch):
    """Only tensors and the longest length (one int) go down to every attention call."""
    from trainer import attention

    seen = []
    original = attention.varlen_sdpa

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append({k: type(v) for k, v in kwargs.items()})
        return original(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(attention, "varlen_sdpa", recording)
    try:
        model = tiny_llama(attention.register())
        CausalLMLoss(model)(**collate(model_examples(), 0, "sdpa", padding_free=True))
    finally:
        monkeypatch.undo()
        attention.register()  # transformers' registry holds the original again
    assert len(seen) == 2  # one per layer
    assert not [k for call in seen for k, t in call.items() if t in (list, tuple)], seen
    assert seen[0][attention.CU_SEQ_LENS] is torch.Tensor and seen[0][attention.MAX_LENGTH] is int


@pytest.mark.parametrize("window", [None, 3])
def test_the_sync_free_masked_kernel_equals_attention_per_example(window, monkeypatch):
    """The GPU fallback (one SDPA call, block mask from the boundaries on the device) computes
    what attention within each example computes, sliding window included."""
    from trainer import attention

    torch.manual_seed(0)
    lengths = [5, 1, 7]
    query, key, value = (torch.randn(1, h, sum(lengths), 8) for h in (4, 2, 2))
    cu = attention.boundaries(lengths)[attention.CU_SEQ_LENS]
    with monkeypatch.context() as reads:  # nothing comes back to the host: no sync on a GPU
        for name in ("tolist", "item", "__bool__", "__int__"):
            reads.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("a host read in the masked kernel"))
        masked = attention._masked(query, key, value, cu, 0.0, None, window)
    per_example = attention._per_example(query, key, value, cu, 0.0, None, window)
    torch.testing.assert_close(masked, per_example)
    if window:  # and the window is applied: without it the longest example's output differs
        assert not torch.allclose(masked, attention._per_example(query, key, value, cu, 0.0, None, None))
