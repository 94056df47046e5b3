"""Collating: a micro batch of samples → the tensors the model takes, on the device.

Padded to the longest row (with a block-diagonal mask for packed rows), or padding-free: the
micro batch as one row with per-example position ids.

Everything is built on the host, where the samples are, including what would otherwise cost
a host sync on the device: where the answer tokens are (``answer_positions``, for the loss)
and the examples' boundaries. On a GPU the host tensors are pinned and copied without
blocking, and ``Prefetcher`` collates and copies the next micro batch on a side stream while
the current one computes.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from . import attention
from .batching import concat
from .samples import IGNORE_INDEX, Sample


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices into the shifted (rows × (length-1)) positions that carry loss.

    Computed on the host, so the loss gathers a known number of hidden states instead of
    boolean-indexing them on the device (a host sync per micro batch).
    """
    return (labels[:, 1:] != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)


def sequence_index(samples: list[Sample], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which sequence each answer position (`answer_positions`, same order) belongs to, numbering
    the micro batch's sequences in order (a preference pair's chosen 2j, its rejected 2j + 1), and
    each sequence's answer-token count: what the loss sums log-probabilities by, known on the host."""
    count = sum(len(s.seq_lens) for s in samples)
    owner = torch.full(labels.shape, -1, dtype=torch.long)
    if labels.shape[0] == 1 and len(samples) > 1:  # padding-free: every sample in one row
        owner[0, : sum(len(s) for s in samples)] = torch.repeat_interleave(
            torch.arange(count), torch.tensor([n for s in samples for n in s.seq_lens]))
    else:
        first = 0
        for row, s in enumerate(samples):
            owner[row, : len(s)] = torch.repeat_interleave(torch.arange(first, first + len(s.seq_lens)),
                                                           torch.tensor(s.seq_lens))
            first += len(s.seq_lens)
    index = owner[:, 1:].reshape(-1)[answer_positions(labels)]  # label t is predicted at position t-1
    return {"sequence_index": index, "sequence_tokens": torch.bincount(index, minlength=count)}


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Host tensors → `device`: pinned and non-blocking on a GPU (the copy overlaps compute)."""
    device = torch.device(device)
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def collate_padding_free(samples: list[Sample], attn_implementation: str = "sdpa",
                         device: torch.device | str = "cpu", sequences: bool = False) -> dict:
    """The micro batch as one row, its examples end to end: no pad token anywhere.

    Position ids restart per example; the examples' boundaries travel as cumulative lengths
    (`trainer.attention`, whose keyword names flash-attention reads too). Each example's first
    label is masked: in one row it
    would be predicted from the previous example's last token, and in a padded row it is
    never predicted at all (nothing precedes it), so the loss is the same.
    """
    row = concat(samples)
    position_ids = torch.cat([torch.arange(n) for n in row.seq_lens])
    batch = {k: v.long()[None] for k, v in (("input_ids", row.input_ids), ("labels", row.labels),
                                             ("position_ids", position_ids))}
    batch["answer_positions"] = answer_positions(batch["labels"])
    if sequences:
        batch.update(sequence_index(samples, batch["labels"]))
    batch.update(attention.boundaries(row.seq_lens))
    return to_device(batch, device)


def collate(
    samples: list[Sample],
    pad_id: int,
    attn_implementation: str = "sdpa",
    mask_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    padding_free: bool = False,
    sequences: bool = False,
) -> dict[str, torch.Tensor]:
    """Pad to the longest row in this micro batch (not to max_seq_length), on `device`.

    Packed rows get position ids that restart per example and a block-diagonal causal mask;
    flash-attention reads the example boundaries from the position ids instead. Padding at a
    row's end is its own block, so no query row is fully masked (softmax of nothing is NaN).
    `padding_free` (not with eager attention): `collate_padding_free` instead. `sequences`: with
    each answer position's sequence (`sequence_index`), for the preference objectives.
    """
    if padding_free and attn_implementation != "eager":
        return collate_padding_free(samples, attn_implementation, device, sequences)
    longest = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(samples):
        input_ids[row, : len(s)] = s.input_ids
        labels[row, : len(s)] = s.labels
    batch = {"input_ids": input_ids, "labels": labels, "answer_positions": answer_positions(labels)}
    if sequences:
        batch.update(sequence_index(samples, labels))

    if all(len(s.seq_lens) == 1 for s in samples):
        lengths = torch.tensor([len(s) for s in samples])
        if (lengths < longest).any():
            batch["attention_mask"] = (torch.arange(longest) < lengths[:, None]).long()
        # No mask at all when nothing is padded: sdpa can then take its fast causal path.
        return to_device(batch, device)

    position_ids = torch.zeros((len(samples), longest), dtype=torch.long)
    block = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, s in enumerate(samples):
        lengths = list(s.seq_lens) + ([longest - len(s)] if len(s) < longest else [])
        start = 0
        for b, n in enumerate(lengths):
            position_ids[row, start : start + n] = torch.arange(n)
            block[row, start : start + n] = b
            start += n
    batch["position_ids"] = position_ids
    batch = to_device(batch, device)
    if attn_implementation.startswith("flash"):
        return batch
    # (B, 1, L, L), built on the device: memory grows with L², fine at fine-tuning lengths.
    block = block.to(device)
    causal = torch.ones(longest, longest, dtype=torch.bool, device=block.device).tril()
    allowed = (block[:, :, None] == block[:, None, :]) & causal
    if attn_implementation == "eager":  # eager adds the mask to the attention scores
        mask = torch.zeros(allowed.shape, dtype=mask_dtype, device=block.device)
        mask.masked_fill_(~allowed, torch.finfo(mask_dtype).min)
    else:
        mask = allowed
    batch["attention_mask"] = mask[:, None]
    return batch


class Prefetcher:
    """Collated micro batches on the device, the next one prepared while the current computes.

    On a GPU the host→device copies run on a side stream; the compute stream waits for them
    only when it takes the batch. On a CPU this is plain collation, one batch ahead.
    """

    def __init__(self, micro_batches: Iterable[list[Sample]], collate_fn, device: torch.device):
        self._source = iter(micro_batches)
        self._collate = collate_fn
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next = self._prepare()

    def _prepare(self):
        samples = next(self._source, None)
        if samples is None:
            return None
        if self._stream is None:
            return self._collate(samples)
        with torch.cuda.stream(self._stream):
            return self._collate(samples)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch = self._next
        if batch is None:
            raise StopIteration
        if self._stream is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_stream(self._stream)
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    value.record_stream(current)  # memory made on the side stream, used on this one
        self._next = self._prepare()
        return batch
