"""The job's training data: records → samples → (packed) rows, with a held-out validation set.

    records.py   read .json/.jsonl files or a hub dataset       → Record
    formats.py   squad / alpaca / prompt+completion / chat      → prompt and answer text
    samples.py   tokenize, mask the prompt, truncate            → Sample
    batching.py  pack rows; which rows each rank trains on at each step
    collate.py   a micro batch → padded or padding-free tensors on the device
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .batching import pack
from .records import read_records
from .samples import Sample, Stats, tokenize


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
