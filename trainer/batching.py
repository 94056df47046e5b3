"""Batching: packing examples into rows, and which rows each rank trains on at each step.

The order of batches is a pure function of (seed, epoch, step): nothing but the step needs
saving to resume at the exact next batch.
"""

from __future__ import annotations

import math
import random

import torch

from ftcore.errors import UserError

from .samples import IGNORE_INDEX, Sample


def concat(samples: list[Sample]) -> Sample:
    """One row of `samples` end to end, each example's first label masked (see `pack`)."""
    seq_lens = tuple(n for s in samples for n in s.seq_lens)
    labels = torch.cat([s.labels for s in samples])
    labels[torch.tensor([0, *seq_lens[:-1]]).cumsum(0)] = IGNORE_INDEX
    return Sample(torch.cat([s.input_ids for s in samples]), labels, seq_lens)


def pack(samples: list[Sample], max_len: int) -> list[Sample]:
    """Concatenate examples, in order, into rows of at most `max_len` tokens.

    The first label of each example is masked: in a packed row it would be predicted from
    the previous example's last token. Attention stays within each example (see `collate`).
    """
    rows: list[Sample] = []
    current: list[Sample] = []

    def flush() -> None:
        if current:
            rows.append(concat(current))
            current.clear()

    used = 0
    for sample in samples:
        if used + len(sample) > max_len:
            flush()
            used = 0
        current.append(sample)
        used += len(sample)
    flush()
    return rows


class StepBatches:
    """Which samples each rank trains on at each optimizer step.

    Step ``s`` (0-based) of epoch ``e`` takes ``global_batch`` consecutive samples of epoch
    ``e``'s shuffled order; the global batch is then dealt to (micro step, rank, slot). The
    set of samples per step does not depend on micro batch size or process count, so changing
    either changes only rounding. The last partial global batch of an epoch is skipped.

    ``group_by_length``: before dealing, the global batch is sorted by length (stable, so
    still a pure function of seed, epoch and step). Each micro batch then holds neighbours in
    length and pads little; every rank in one accumulation round gets similar lengths, so no
    rank waits long for another. Which samples make the step, and so the loss, is unchanged:
    only summation order (rounding) differs. It pays only when a rank does more than one
    micro batch per step (gradient accumulation); with one there is nothing to regroup.
    """

    def __init__(
        self,
        samples: list[Sample],
        global_batch: int,
        micro_batch: int,
        dp_size: int,
        rank: int,
        seed: int,
        shuffle: bool,
        group_by_length: bool = True,
    ):
        if len(samples) < global_batch:
            raise UserError(
                f"the training set has {len(samples)} rows, fewer than data.global_batch_size={global_batch}"
            )
        self.samples, self.global_batch, self.micro, self.dp, self.rank = samples, global_batch, micro_batch, dp_size, rank
        self.seed, self.shuffle, self.group_by_length = seed, shuffle, group_by_length
        self.steps_per_epoch = len(samples) // global_batch
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.samples)))
            if self.shuffle:
                random.Random(f"ft-data-{self.seed}-{epoch}").shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index into that epoch's shuffled order) where step `step` starts."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.global_batch

    def global_batch_samples(self, step: int) -> list[Sample]:
        epoch, start = self.position(step)
        return [self.samples[i] for i in self.order(epoch)[start : start + self.global_batch]]

    def micro_batches(self, step: int) -> list[list[Sample]]:
        """This rank's micro batches for `step`, in accumulation order."""
        batch = self.global_batch_samples(step)
        if self.group_by_length:
            batch = sorted(batch, key=len)
        per_round = self.micro * self.dp
        return [
            batch[m * per_round + self.rank * self.micro : m * per_round + (self.rank + 1) * self.micro]
            for m in range(len(batch) // per_round)
        ]


def val_batches(samples: list[Sample], micro_batch: int, dp_size: int, rank: int, limit: int | None) -> list[tuple[list[Sample], bool]]:
    """This rank's validation micro batches, as (batch, counts).

    Every rank gets the same number of batches (FSDP's collectives need each rank to run
    every forward); a rank that runs out repeats its first batch with ``counts=False``.
    """
    batches = [samples[i : i + micro_batch] for i in range(0, len(samples), micro_batch)]
    if limit is not None:
        batches = batches[:limit]
    mine = batches[rank::dp_size]
    rounds = math.ceil(len(batches) / dp_size)
    filler = batches[0] if batches else []
    return [(mine[i], True) if i < len(mine) else (filler, False) for i in range(rounds)]
