"""Training data: records → token ids with prompt masking → packed rows → per-step batches.

Everything is tokenized once, up front, so the training loop only slices and pads. Each
example becomes ``input_ids`` plus ``labels`` that are -100 on the prompt: the loss covers
the answer (and the eos that ends it) only.

Formats (``data.format``):

* ``squad``: ``context``, ``question``, ``answers.text[0]`` (a JSON list, JSONL, or SQuAD v1.1's
  own ``{"data": [{"paragraphs": [{"context", "qas"}]}]}`` layout);
* ``alpaca``: ``instruction``, optional ``input``, ``output``;
* ``jsonl``: ``prompt`` + ``completion``, or chat ``messages`` rendered with the tokenizer's chat
  template, training on the assistant turns only.

The order of batches is a pure function of (seed, epoch, step): nothing but the step needs
saving to resume at the exact next batch.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ftcore.errors import UserError

IGNORE_INDEX = -100

PROMPTS = {
    "squad": "Context: {context}\nQuestion: {question}\nAnswer:",
    "alpaca": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "alpaca_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
}
_MAX_ERRORS_SHOWN = 10


# --- where files are ---------------------------------------------------------------------


from ftcore.shipped import expand as resolve, shipped_file  # noqa: E402,F401  (H1: import directly)


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    where: str  # "data.jsonl line 12": how errors name this record
    fields: dict[str, Any]


def read_records(path: str, split: str = "train") -> list[Record]:
    """Read a local .json/.jsonl file, or a split of a hub dataset (trainer/hub_data.py)."""
    path = resolve(path)
    local = Path(path)
    if local.is_file():
        if local.suffix in (".json", ".jsonl"):
            return _read_file(local)
        raise UserError(f"{local}: expected a .json or .jsonl file")
    if local.suffix in (".json", ".jsonl") or local.is_absolute() or path.startswith("."):
        raise UserError(f"data file {path} does not exist")
    from trainer import hub_data

    records = []
    for file in hub_data.split_files(path, split):
        if file.suffix == ".parquet":
            rows = hub_data.parquet_rows(file)
            records += [Record(f"{path}[{split}] {file.name} row {i}", row) for i, row in enumerate(rows)]
        else:
            records += _read_file(file)
    return records


def _read_file(path: Path) -> list[Record]:
    return list(_read_jsonl(path)) if path.suffix == ".jsonl" else _read_json(path)


def _read_jsonl(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number}: not valid JSON ({e.msg})") from None
            if not isinstance(value, dict):
                raise UserError(f"{path} line {number}: expected a JSON object, got {type(value).__name__}")
            yield Record(f"{path} line {number}", value)


def _read_json(path: Path) -> list[Record]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(value, list):
        return [Record(f"{path} record [{i}]", r if isinstance(r, dict) else {"_not_an_object": r}) for i, r in enumerate(value)]
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        return _squad_original_layout(path, value["data"])
    raise UserError(f"{path}: expected a JSON list of records or SQuAD's {{\"data\": [...]}} layout")


def _squad_original_layout(path: Path, articles: list) -> list[Record]:
    records = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path} data[{a}].paragraphs[{p}].qas[{q}]"
                records.append(Record(where, {"context": paragraph.get("context"), **qa}))
    return records


# --- records → text segments (prompt: not trained, answer: trained) -------------------------


Segments = list[tuple[str, bool]]


def _need(record: Record, *keys: str) -> None:
    missing = [k for k in keys if record.fields.get(k) is None]
    if "_not_an_object" in record.fields:
        raise UserError(f"{record.where}: expected a JSON object")
    if missing:
        present = ", ".join(sorted(record.fields)) or "none"
        raise UserError(f"{record.where}: missing {', '.join(repr(k) for k in missing)} (fields present: {present})")


def _fill(template: str, record: Record) -> str:
    try:
        return template.format(**record.fields)
    except KeyError as e:
        raise UserError(f"{record.where}: prompt_template needs field {e.args[0]!r}, which is missing") from None


def squad_segments(record: Record, template: str | None) -> Segments:
    _need(record, "context", "question", "answers")
    answers = record.fields["answers"]
    if isinstance(answers, dict):  # Hugging Face's flattened squad: {"text": [...], "answer_start": [...]}
        texts = answers.get("text")
    elif isinstance(answers, list):  # SQuAD v1.1's own layout: [{"text": ..., "answer_start": ...}]
        texts = [a.get("text") for a in answers if isinstance(a, dict)]
    else:
        texts = None
    if not texts or not isinstance(texts[0], str):
        raise UserError(f"{record.where}: missing answers.text[0] (answers = {answers!r:.80})")
    prompt = _fill(template or PROMPTS["squad"], record)
    # "Answer:" + " Oslo": the space belongs to the answer's first token, as in running text.
    separator = "" if prompt[-1:].isspace() else " "
    return [(prompt, False), (separator + texts[0].strip(), True)]


def alpaca_segments(record: Record, template: str | None) -> Segments:
    _need(record, "instruction", "output")
    has_input = bool(str(record.fields.get("input") or "").strip())
    default = PROMPTS["alpaca"] if has_input else PROMPTS["alpaca_no_input"]
    fields = Record(record.where, {**record.fields, "input": record.fields.get("input") or ""})
    return [(_fill(template or default, fields), False), (str(record.fields["output"]), True)]


def completion_segments(record: Record, template: str | None) -> Segments:
    _need(record, "prompt", "completion")
    prompt = _fill(template, record) if template else str(record.fields["prompt"])
    return [(prompt, False), (str(record.fields["completion"]), True)]


def chat_segments(record: Record, tokenizer) -> Segments:
    """Split a rendered conversation into (text, is_assistant) pieces.

    Renders growing prefixes of the conversation: each render must extend the previous one
    (true of ordinary chat templates), so the pieces concatenate to exactly the full render.
    The assistant header (what `add_generation_prompt` adds) is prompt, not answer.
    """
    messages = record.fields["messages"]
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{record.where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"{record.where}: messages[{i}] is missing 'role' or 'content'")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{record.where}: no assistant message to train on")
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("data has chat `messages` but the tokenizer has no chat_template")

    def render(upto: int, generation_prompt: bool = False) -> str:
        if upto == 0 and not generation_prompt:
            return ""
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)

    segments: Segments = []
    done = ""
    for i, message in enumerate(messages):
        steps = [(render(i, True), False)] if message["role"] == "assistant" else []
        steps.append((render(i + 1), message["role"] == "assistant"))
        for text, trained in steps:
            if not text.startswith(done):
                raise UserError(
                    f"{record.where}: the chat template does not render conversations prefix by "
                    "prefix, so assistant turns cannot be located"
                )
            segments.append((text[len(done) :], trained))
            done = text
    return segments


# --- tokenization ------------------------------------------------------------------------


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


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens this tokenizer adds around plain text on its own (e.g. Llama's bos)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), 0)
    return full[:start], full[start + len(bare) :]


def tokenize(records: list[Record], fmt: str, tokenizer, max_len: int, template: str | None, stats: Stats) -> list[Sample]:
    """Records → samples with prompt labels masked, truncated to `max_len` tokens."""
    errors: list[str] = []
    all_segments: list[tuple[Segments, bool]] = []  # (segments, rendered by a chat template)
    for record in records:
        try:
            if fmt == "squad":
                segments = squad_segments(record, template)
            elif fmt == "alpaca":
                segments = alpaca_segments(record, template)
            elif "messages" in record.fields:
                segments = chat_segments(record, tokenizer)
            else:
                segments = completion_segments(record, template)
        except UserError as e:
            errors.append(str(e))
            continue
        all_segments.append((segments, fmt == "jsonl" and "messages" in record.fields))
    if errors:
        more = f"\n... and {len(errors) - _MAX_ERRORS_SHOWN} more" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise UserError("malformed records:\n" + "\n".join(errors[:_MAX_ERRORS_SHOWN]) + more)

    # One batched call: the Rust tokenizer parallelises it, a Python loop would not.
    flat = [text for segments, _ in all_segments for text, _ in segments]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    prefix, _ = _special_affixes(tokenizer)
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


# --- the job's data ------------------------------------------------------------------------


@dataclass
class Data:
    train: list[Sample]
    val: list[Sample]
    stats: Stats

    def summary(self) -> str:
        s = self.stats
        return (
            f"data: {s.records} records → {len(self.train)} training rows, {len(self.val)} validation examples; "
            f"{s.truncated} truncated to max_seq_length, {s.dropped} dropped (no answer left)"
            + "".join(f"; {n}" for n in s.notes)
        )


def load(cfg, tokenizer, seed: int) -> Data:
    """Read, validate, split, tokenize and (optionally) pack the job's data. `cfg` is DataConfig."""
    stats = Stats()
    records = read_records(cfg.path, cfg.split)
    if cfg.limit_samples is not None:
        records = records[: cfg.limit_samples]
    if cfg.val_path:
        val_records = read_records(cfg.val_path, cfg.val_split)
    elif cfg.val_fraction > 0 and len(records) > 1:
        # Held out once, by record and by seed: the same records on every rank and every resume.
        order = list(range(len(records)))
        random.Random(f"ft-val-{seed}").shuffle(order)
        n_val = min(len(records) - 1, max(1, math.floor(len(records) * cfg.val_fraction)))
        held = set(order[:n_val])
        val_records = [r for i, r in enumerate(records) if i in held]
        records = [r for i, r in enumerate(records) if i not in held]
    else:
        val_records = []
    stats.records = len(records) + len(val_records)

    train = tokenize(records, cfg.format, tokenizer, cfg.max_seq_length, cfg.prompt_template, stats)
    val = tokenize(val_records, cfg.format, tokenizer, cfg.max_seq_length, cfg.prompt_template, stats)
    if cfg.packing:
        examples = len(train)
        train = pack(train, cfg.max_seq_length)
        stats.notes.append(f"packed {examples} examples into {len(train)} rows of ≤ {cfg.max_seq_length} tokens")
    return Data(train, val, stats)


# --- batches -------------------------------------------------------------------------------


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
