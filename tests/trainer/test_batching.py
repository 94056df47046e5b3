"""trainer.batching: packing, and the order of batches over steps, ranks and micro batches."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import ids_of, numbered, sample_of

from ftcore.errors import UserError
from trainer.batching import StepBatches, pack, val_batches
from trainer.samples import IGNORE_INDEX


def test_global_batch_is_the_same_whatever_the_layout():
    samples = numbered(37)
    one = StepBatches(samples, 8, 8, 1, 0, seed=1, shuffle=True)
    for step in (0, 3, 4, 9):  # 4 steps per epoch: 9 is in epoch 2
        expected = sorted(int(s.input_ids[0]) for s in one.global_batch_samples(step))
        for micro, dp in [(1, 1), (2, 2), (4, 2), (1, 8)]:
            seen = []
            for rank in range(dp):
                plan = StepBatches(samples, 8, micro, dp, rank, seed=1, shuffle=True)
                mbs = plan.micro_batches(step)
                assert len(mbs) == 8 // (micro * dp) and all(len(mb) == micro for mb in mbs)
                seen += [i for mb in ids_of(mbs) for i in mb]
            assert sorted(seen) == expected


def test_order_is_seeded_per_epoch_and_positions_are_exact():
    plan = StepBatches(numbered(37), 8, 8, 1, 0, seed=1, shuffle=True)
    assert plan.steps_per_epoch == 4
    assert plan.position(0) == (0, 0) and plan.position(5) == (1, 8)
    epoch0 = [i for s in range(4) for i in ids_of(plan.micro_batches(s))[0]]
    assert len(set(epoch0)) == 32  # no repeats within an epoch
    assert ids_of(plan.micro_batches(4)) != ids_of(plan.micro_batches(0))  # reshuffled
    again = StepBatches(numbered(37), 8, 8, 1, 0, seed=1, shuffle=True)
    assert ids_of(again.micro_batches(6)) == ids_of(plan.micro_batches(6))
    unshuffled = StepBatches(numbered(37), 8, 4, 1, 0, seed=1, shuffle=False)
    assert ids_of(unshuffled.micro_batches(1)) == [[8, 9, 10, 11], [12, 13, 14, 15]]


def test_too_little_data_for_one_batch_is_a_config_error():
    with pytest.raises(UserError, match="fewer than data.global_batch_size=8"):
        StepBatches(numbered(5), 8, 1, 1, 0, seed=0, shuffle=True)


def test_validation_batches_are_even_across_ranks():
    samples = numbered(5)
    per_rank = [val_batches(samples, 2, 2, r, None) for r in range(2)]
    assert [len(b) for b in per_rank] == [2, 2]  # 3 batches over 2 ranks: one filler
    counted = [ids_of([b]) for rank in per_rank for b, counts in rank if counts]
    assert sorted(i for c in counted for mb in c for i in mb) == [0, 1, 2, 3, 4]
    assert len(val_batches(samples, 2, 1, 0, 2)) == 2  # limit_val_batches


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=20), max_len=st.integers(12, 30))
def test_packing_keeps_every_token_in_order_and_masks_only_example_starts(lengths, max_len):
    examples = [sample_of(list(range(100 * i, 100 * i + n)), list(range(100 * i, 100 * i + n))) for i, n in enumerate(lengths)]
    rows = pack(examples, max_len)
    assert all(len(r) <= max_len and sum(r.seq_lens) == len(r) for r in rows)
    assert torch.cat([r.input_ids for r in rows]).tolist() == [t for ex in examples for t in ex.input_ids.tolist()]
    labels = torch.cat([r.labels for r in rows]).tolist()
    starts = {sum(lengths[:i]) for i in range(len(lengths))}
    assert [i for i, l in enumerate(labels) if l == IGNORE_INDEX] == sorted(starts)
    # The loss covers the same positions as the examples alone: the first label of each never counted.
    assert sum(r.answer_tokens for r in rows) == sum(ex.answer_tokens for ex in examples)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(8, 40), step=st.integers(0, 30), layout=st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (1, 4)]))
def test_every_rank_and_micro_batch_together_cover_the_global_batch(n, step, layout):
    micro, dp = layout
    samples = numbered(n)
    expected = sorted(int(s.input_ids[0]) for s in StepBatches(samples, 8, 8, 1, 0, 5, True).global_batch_samples(step))
    seen = sorted(i for r in range(dp) for mb in ids_of(StepBatches(samples, 8, micro, dp, r, 5, True).micro_batches(step)) for i in mb)
    assert seen == expected


def test_length_grouping_sorts_within_the_global_batch_only():
    samples = [sample_of([i] * (1 + (i * 7) % 13), [i] * (1 + (i * 7) % 13)) for i in range(40)]
    for micro, dp in [(2, 1), (2, 2), (1, 4)]:
        plans = [StepBatches(samples, 16, micro, dp, r, seed=3, shuffle=True) for r in range(dp)]
        plain = StepBatches(samples, 16, micro, dp, 0, seed=3, shuffle=True, group_by_length=False)
        for step in (0, 1, 3):  # step 3 is in the second epoch
            rounds = list(zip(*[p.micro_batches(step) for p in plans]))  # (rank 0's mb, rank 1's mb, ...) per round
            dealt = [s for r in rounds for mb in r for s in mb]
            assert [len(s) for s in dealt] == sorted(len(s) for s in plain.global_batch_samples(step))
            assert sorted(int(s.input_ids[0]) for s in dealt) == sorted(int(s.input_ids[0]) for s in plain.global_batch_samples(step))
    again = StepBatches(samples, 16, 2, 1, 0, seed=3, shuffle=True)
    first = StepBatches(samples, 16, 2, 1, 0, seed=3, shuffle=True)
    assert ids_of(again.micro_batches(2)) == ids_of(first.micro_batches(2))  # a pure function of the step
