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

    @property
    def chosen_tokens(self) -> int:
        """A preference sample's (chosen, rejected, ...) answer tokens in its chosen sequences."""
        total = start = 0
        for i, n in enumerate(self.seq_lens):
            if i % 2 == 0:
                total += int((self.labels[start + 1 : start + n] != IGNORE_INDEX).sum())
            start += n
        return total


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
    """Records → samples with prompt labels masked, truncated to `max_len` tokens.

    A preference record (`ftcore.formats.Format.pairs`) becomes one sample of two sequences end to
    end, chosen then rejected (`seq_lens` of two), each truncated to `max_len` on its own; collating
    keeps them apart as it keeps packed examples apart, so both run in one forward."""
    errors: list[str] = []
    # Per record: (its conversations, one or a chosen/rejected pair; rendered by a chat template).
    all_segments: list[tuple[tuple[formats.Segments, ...], bool]] = []
    for record in records:
        try:
            found, chat = formats.segments(record, fmt, template, tokenizer)
            all_segments.append((found if isinstance(found, tuple) else (found,), chat))
        except UserError as e:
            errors.append(str(e))
    if errors:
        more = f"\n... and {len(errors) - _MAX_ERRORS_SHOWN} more" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise UserError("malformed records:\n" + "\n".join(errors[:_MAX_ERRORS_SHOWN]) + more)

    # A record longer than max_len tokens is cut anyway: cut its text first, so one huge
    # record does not cost a tokenizer pass over all of it.
    budget = max_len * MAX_CHARS_PER_TOKEN
    for index, (conversations, chat) in enumerate(all_segments):
        if any(sum(len(text) for text, _ in segs) > budget for segs in conversations):
            all_segments[index] = (tuple(_clip(segs, budget) for segs in conversations), chat)

    # One batched call: the Rust tokenizer parallelises it, a Python loop would not.
    flat = [text for conversations, _ in all_segments for segments in conversations for text, _ in segments]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    prefix, _ = special_affixes(tokenizer)
    eos = tokenizer.eos_token_id

    samples = []
    cursor = 0
    for conversations, chat in all_segments:
        sequences, truncated = [], False
        for segments in conversations:
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
                truncated = True
                input_ids, labels = input_ids[:max_len], labels[:max_len]
            sequences.append(Sample(torch.tensor(input_ids, dtype=torch.int32), torch.tensor(labels, dtype=torch.int32),
                                    (len(input_ids),)))
        stats.truncated += truncated
        if any(sequence.answer_tokens == 0 for sequence in sequences):
            stats.dropped += 1  # prompt alone fills max_seq_length: nothing left to learn from
            continue
        if len(sequences) == 1:
            samples.append(sequences[0])
        else:
            samples.append(Sample(torch.cat([x.input_ids for x in sequences]), torch.cat([x.labels for x in sequences]),
                                  tuple(len(x) for x in sequences)))
    return samples
