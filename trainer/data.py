"""The job's training data: records → samples → (packed) rows, with a held-out validation set.

    records.py   read .json/.jsonl files or a hub dataset       → Record
    formats.py   squad / alpaca / prompt+completion / chat      → prompt and answer text
    samples.py   tokenize, mask the prompt, truncate            → Sample
    batching.py  pack rows; which rows each rank trains on at each step
    collate.py   a micro batch → padded or padding-free tensors on the device
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ftcore import shipped
from ftcore.errors import UserError

from . import dist
from .batching import pack
from .records import read_records
from .samples import Sample, Stats, tokenize

_CACHE_VERSION = 1  # bump when what `load` makes from the same inputs changes


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


def load(cfg, tokenizer, seed: int, cache: Path | None = None, is_main: bool = True) -> Data:
    """The job's data (`cfg`: DataConfig), tokenized once per job.

    With a `cache` folder (shared by all ranks: the job folder's), rank 0 tokenizes into
    ``tokens-<key>.pt`` while the other ranks wait for that file, not in a collective (a long
    tokenization would time one out); a resubmitted job finds the file and tokenizes nothing.
    The key covers the data files' contents, the tokenizer and every setting that changes the
    result, so a change makes a new file.
    """
    if cache is None:
        return tokenize_all(cfg, tokenizer, seed)
    key = dist.broadcast_object(cache_key(cfg, tokenizer, seed) if is_main else None)
    path = Path(cache) / f"tokens-{key}.pt"
    failed = path.with_suffix(".error")
    if is_main and not path.exists():
        Path(cache).mkdir(parents=True, exist_ok=True)
        failed.unlink(missing_ok=True)
        try:
            data = tokenize_all(cfg, tokenizer, seed)
        except UserError as err:
            failed.write_text(json.dumps(err.problems))  # the waiting ranks stop with the same message
            raise
        _write(path, data)
        for old in Path(cache).glob("tokens-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        return data
    while not path.exists():
        if failed.exists():
            raise UserError(*json.loads(failed.read_text()))
        time.sleep(0.2)
    return _read(path)


def cache_key(cfg, tokenizer, seed: int) -> str:
    """What the tokenized data depend on: data contents, tokenizer, settings, this code's version."""
    digest = hashlib.sha256()
    settings = {k: getattr(cfg, k) for k in ("path", "split", "val_path", "val_split", "val_fraction", "format",
                                             "limit_samples", "max_seq_length", "packing", "prompt_template")}
    digest.update(json.dumps([_CACHE_VERSION, seed, settings], sort_keys=True).encode())
    for spec in (cfg.path, cfg.val_path):
        local = Path(shipped.expand(spec)) if spec else None
        if local is not None and local.is_file():  # a hub dataset counts by name and split (in settings)
            with open(local, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
    with tempfile.TemporaryDirectory() as folder:  # the tokenizer as it saves itself: vocabulary, template, specials
        for name in sorted(tokenizer.save_pretrained(folder)):
            digest.update(Path(name).name.encode() + Path(name).read_bytes())
    return digest.hexdigest()[:20]


def _pack_rows(samples: list[Sample]) -> dict:
    return {
        "input_ids": torch.cat([s.input_ids for s in samples]) if samples else torch.zeros(0, dtype=torch.int32),
        "labels": torch.cat([s.labels for s in samples]) if samples else torch.zeros(0, dtype=torch.int32),
        "seq_lens": torch.tensor([n for s in samples for n in s.seq_lens], dtype=torch.int64),
        "parts": torch.tensor([len(s.seq_lens) for s in samples], dtype=torch.int64),
    }


def _unpack_rows(rows: dict) -> list[Sample]:
    seq_lens = rows["seq_lens"].tolist()
    samples, token, part = [], 0, 0
    for parts in rows["parts"].tolist():
        lens = tuple(seq_lens[part : part + parts])
        n = sum(lens)
        samples.append(Sample(rows["input_ids"][token : token + n], rows["labels"][token : token + n], lens))
        token, part = token + n, part + parts
    return samples


def _write(path: Path, data: Data) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    torch.save({"train": _pack_rows(data.train), "val": _pack_rows(data.val), "stats": asdict(data.stats)}, tmp)
    os.replace(tmp, path)  # whole or absent: the waiting ranks never read half a file


def _read(path: Path) -> Data:
    saved = torch.load(path, weights_only=True)
    stats = Stats(**saved["stats"])
    stats.notes.append(f"tokenized once, read from {path}")
    return Data(_unpack_rows(saved["train"]), _unpack_rows(saved["val"]), stats)


def hold_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training, held-out) records: `fraction` of them held out by record and by seed, so the
    same ones on every rank, every resume, and in `ft eval JOB`, which re-scores them."""
    if not fraction > 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(f"ft-val-{seed}").shuffle(order)
    n_val = min(len(records) - 1, max(1, math.floor(len(records) * fraction)))
    held = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def tokenize_all(cfg, tokenizer, seed: int) -> Data:
    """Read, validate, split, tokenize and (optionally) pack the job's data."""
    stats = Stats()
    records = read_records(cfg.path, cfg.split)
    if cfg.limit_samples is not None:
        records = records[: cfg.limit_samples]
    if cfg.val_path:
        val_records = read_records(cfg.val_path, cfg.val_split)
    else:
        records, val_records = hold_out(records, cfg.val_fraction, seed)
    stats.records = len(records) + len(val_records)

    train = tokenize(records, cfg.format, tokenizer, cfg.max_seq_length, cfg.prompt_template, stats)
    val = tokenize(val_records, cfg.format, tokenizer, cfg.max_seq_length, cfg.prompt_template, stats)
    if cfg.packing:
        examples = len(train)
        train = pack(train, cfg.max_seq_length)
        stats.notes.append(f"packed {examples} examples into {len(train)} rows of ≤ {cfg.max_seq_length} tokens")
    return Data(train, val, stats)
