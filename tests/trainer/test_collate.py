"""trainer.collate: padded rows with block masks for packed rows, and padding-free rows."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import model_examples, sample_of

from trainer.batching import pack
from trainer.collate import collate


def test_pack_rows_positions_labels_and_block_mask():
    a = sample_of([1, 10, 11, 12], [-100, -100, 11, 12])
    b = sample_of([1, 20, 21], [-100, 21, 21])
    c = sample_of([1, 30, 31, 32, 33], [1, -100, 31, 32, 33])  # first label set on purpose: packing must mask it
    rows = pack([a, b, c], max_len=8)
    assert [r.seq_lens for r in rows] == [(4, 3), (5,)]
    assert rows[0].input_ids.tolist() == [1, 10, 11, 12, 1, 20, 21]
    assert rows[0].labels.tolist() == [-100, -100, 11, 12, -100, 21, 21]
    assert rows[1].labels.tolist() == [-100, -100, 31, 32, 33]

    batch = collate(rows, pad_id=0, attn_implementation="sdpa")
    assert batch["input_ids"].shape == (2, 7)  # longest row, not max_len
    assert batch["input_ids"][1].tolist() == [1, 30, 31, 32, 33, 0, 0]
    assert batch["labels"][1].tolist() == [-100, -100, 31, 32, 33, -100, -100]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 4, 0, 1]]
    mask = batch["attention_mask"][:, 0]
    for row, blocks in enumerate([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]):
        for q in range(7):
            for k in range(7):
                assert bool(mask[row, q, k]) == (k <= q and blocks[q] == blocks[k]), (row, q, k)

    eager = collate(rows, pad_id=0, attn_implementation="eager", mask_dtype=torch.float32)["attention_mask"][:, 0]
    assert torch.equal(eager == 0, mask)
    flash = collate(rows, pad_id=0, attn_implementation="flash_attention_2")
    assert "attention_mask" not in flash and "position_ids" in flash


def test_unpacked_batches_pad_to_longest_and_mask_only_when_needed():
    a, b = sample_of([1, 2, 3], [-100, 2, 3]), sample_of([1, 2], [-100, 2])
    batch = collate([a, b], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 2, -100]]
    assert "attention_mask" not in collate([a, a], pad_id=0)  # nothing padded: sdpa's causal fast path


def test_padding_free_collate_is_one_row_without_padding():
    examples = model_examples()
    batch = collate(examples, 0, "sdpa", padding_free=True)
    assert batch["input_ids"].shape == (1, 7 + 5 + 9)
    # Boundaries as tensors (a compiled layer guards on their shape, not their values), in
    # the keyword names flash-attention reads too.
    assert batch["cu_seq_lens_q"].tolist() == [0, 7, 12, 21] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == 9
    assert batch["position_ids"][0].tolist() == [*range(7), *range(5), *range(9)]
    assert "attention_mask" not in batch
    assert "cu_seq_lens_q" not in collate(examples, 0, "eager", padding_free=True)  # eager pads


@pytest.mark.parametrize("padding_free", [False, True])
def test_answer_positions_are_where_the_shifted_labels_carry_loss(padding_free):
    from trainer.samples import IGNORE_INDEX

    batch = collate(model_examples(), 0, "sdpa", padding_free=padding_free)
    shifted = batch["labels"][:, 1:].reshape(-1)
    expected = [i for i, label in enumerate(shifted.tolist()) if label != IGNORE_INDEX]
    assert batch["answer_positions"].tolist() == expected


def test_prefetcher_yields_the_collated_batches_in_order():
    from trainer.collate import Prefetcher

    micro = [model_examples()[:2], model_examples()[2:], model_examples()]
    fetched = list(Prefetcher(micro, lambda s: collate(s, 0, padding_free=True), torch.device("cpu")))
    assert len(fetched) == 3
    for got, samples in zip(fetched, micro):
        assert torch.equal(got["input_ids"], collate(samples, 0, padding_free=True)["input_ids"])
