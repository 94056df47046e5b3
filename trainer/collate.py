"""Collating: a micro batch of samples → the tensors the model takes, on the device.

Padded to the longest row (with a block-diagonal mask for packed rows), or padding-free: the
micro batch as one row with per-example position ids.
"""

from __future__ import annotations

import torch

from .batching import concat
from .samples import IGNORE_INDEX, Sample


def collate_padding_free(samples: list[Sample], attn_implementation: str = "sdpa",
                         device: torch.device | str = "cpu") -> dict:
    """The micro batch as one row, its examples end to end: no pad token anywhere.

    Position ids restart per example. For sdpa the examples' lengths travel as `seq_lens`
    (attention runs per example: `trainer.attention`); flash-attention reads the same
    boundaries from the position ids. Each example's first label is masked: in one row it
    would be predicted from the previous example's last token, and in a padded row it is
    never predicted at all (nothing precedes it), so the loss is the same.
    """
    row = concat(samples)
    position_ids = torch.cat([torch.arange(n) for n in row.seq_lens])
    batch = {k: v.long()[None].to(device, non_blocking=True)
             for k, v in (("input_ids", row.input_ids), ("labels", row.labels), ("position_ids", position_ids))}
    if not attn_implementation.startswith("flash"):
        batch["seq_lens"] = list(row.seq_lens)
    return batch


def collate(
    samples: list[Sample],
    pad_id: int,
    attn_implementation: str = "sdpa",
    mask_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    padding_free: bool = False,
) -> dict[str, torch.Tensor]:
    """Pad to the longest row in this micro batch (not to max_seq_length), on `device`.

    Packed rows get position ids that restart per example and a block-diagonal causal mask;
    flash-attention reads the example boundaries from the position ids instead. Padding at a
    row's end is its own block, so no query row is fully masked (softmax of nothing is NaN).
    `padding_free` (not with eager attention): `collate_padding_free` instead.
    """
    if padding_free and attn_implementation != "eager":
        return collate_padding_free(samples, attn_implementation, device)
    longest = max(len(s) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(samples):
        input_ids[row, : len(s)] = s.input_ids
        labels[row, : len(s)] = s.labels
    batch = {"input_ids": input_ids, "labels": labels}

    if all(len(s.seq_lens) == 1 for s in samples):
        lengths = torch.tensor([len(s) for s in samples])
        if (lengths < longest).any():
            batch["attention_mask"] = (torch.arange(longest) < lengths[:, None]).long()
        # No mask at all when nothing is padded: sdpa can then take its fast causal path.
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

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
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
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
