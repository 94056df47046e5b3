"""Tokenizing: records → samples, token ids with the prompt masked out of the loss.

Each example becomes ``input_ids`` plus ``labels`` that are ``IGNORE_INDEX`` on the prompt: the
loss covers the answer (and the eos that ends it) only. Everything is tokenized once, up front,
so the training loop only slices and pads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ftcore.errors import UserError

from . import formats
from .records import Record

IGNORE_INDEX = -100  # the label of a position that carries no loss (torch's cross-entropy default)
_MAX_ERRORS_SHOWN = 10


@dataclass
class Sample:
    """One training row: an example, or several packed (``seq_lens`` > 1 entry)."""

    input_ids: torch.Tensor  # int32, 1-D
    labels: torch.Tensor  # int32, -100 where no loss
    seq_lens: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def answer_tokens(self) -> int:
        """Positions that carry loss after the shift (label t is predicted at t-1)."""
        return int((self.labels[1:] != IGNORE_INDEX).sum())


@dataclass
class Stats:
    records: int = 0
    truncated: int = 0
    dropped: int = 0
    notes: list[str] = field(default_factory=list)


# No token of a real tokenizer spans more characters than this, so `max_len` tokens never come
# from more than max_len × this many characters: text beyond that cannot survive truncation.
MAX_CHARS_PER_TOKEN = 64


def _clip(segments: formats.Segments, budget: int) -> formats.Segments:
    """The segments cut to `budget` characters in all, in order (what follows is dropped)."""
    clipped = []
    for text, trained in segments:
        clipped.append((text[:budget], trained))
        budget = max(0, budget - len(text))
    return clipped


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens this tokenizer adds around plain text on its own (e.g. Llama's bos)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), 0)
    return full[:start], full[start + len(bare) :]


def tokenize(records: list[Record], fmt: str, tokenizer, max_len: int, template: str | None, stats: Stats) -> list[Sample]:
    """Records → samples with prompt labels masked, truncated to `max_len` tokens."""
    errors: list[str] = []
    all_segments: list[tuple[formats.Segments, bool]] = []  # (segments, rendered by a chat template)
    for record in records:
        try:
            all_segments.append(formats.segments(record, fmt, template, tokenizer))
        except UserError as e:
            errors.append(str(e))
    if errors:
        more = f"\n... and {len(errors) - _MAX_ERRORS_SHOWN} more" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise UserError("malformed records:\n" + "\n".join(errors[:_MAX_ERRORS_SHOWN]) + more)

    # A record longer than max_len tokens is cut anyway: cut its text first, so one huge
    # record does not cost a tokenizer pass over all of it.
    budget = max_len * MAX_CHARS_PER_TOKEN
    for index, (segs, chat) in enumerate(all_segments):
        if sum(len(text) for text, _ in segs) > budget:
            all_segments[index] = (_clip(segs, budget), chat)

    # One batched call: the Rust tokenizer parallelises it, a Python loop would not.
    flat = [text for segments, _ in all_segments for text, _ in segments]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    prefix, _ = special_affixes(tokenizer)
    eos = tokenizer.eos_token_id

    samples = []
    cursor = 0
    for segments, chat in all_segments:
        # Chat templates write their own bos/eos; prompt/answer pairs get the tokenizer's
        # usual prefix and an eos that the model learns to emit after the answer.
        input_ids = [] if chat else list(prefix)
        labels = [IGNORE_INDEX] * len(input_ids)
        for _, trained in segments:
            piece = ids[cursor]
            cursor += 1
            input_ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
        if not chat and eos is not None:
            input_ids.append(eos)
            labels.append(eos)
        if len(input_ids) > max_len:
            stats.truncated += 1
            input_ids, labels = input_ids[:max_len], labels[:max_len]
        sample = Sample(torch.tensor(input_ids, dtype=torch.int32), torch.tensor(labels, dtype=torch.int32), (len(input_ids),))
        if sample.answer_tokens == 0:
            stats.dropped += 1  # prompt alone fills max_seq_length: nothing left to learn from
            continue
        samples.append(sample)
    return samples
