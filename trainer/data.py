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
import sys
import tempfile
import threading
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


# Rank 0 touches its heartbeat file this often while it tokenizes; a waiting rank that sees
# no heartbeat for PEER_SILENT_S takes rank 0 for dead (a shared filesystem may show a change
# on other nodes only after its attribute cache, about a minute, expires).
# $FT_PEER_SILENT_S changes the patience (a slow shared filesystem, or a test).
def _patience(default: float = 180.0) -> float:
    try:
        value = float(os.environ.get("FT_PEER_SILENT_S") or default)
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


PEER_SILENT_S = _patience()
HEARTBEAT_S = min(5.0, PEER_SILENT_S / 4)


class PeerGone(UserError):
    """Rank 0 died while the others waited for its tokenized data: not the user's mistake."""

    exit_code = 1


def load(cfg, tokenizer, seed: int, cache: Path | None = None, is_main: bool = True) -> Data:
    """The job's data (`cfg`: DataConfig), tokenized once per job.

    With a `cache` folder (shared by all ranks: the job folder's), rank 0 tokenizes into
    ``tokens-<key>.pt`` while the other ranks wait for that file, not in a collective (a long
    tokenization would time one out); they give up with a message when rank 0 stops beating
    its heartbeat (it died). A resubmitted job finds the file and tokenizes nothing; a file
    that cannot be read back (damaged) is made again. The key covers the data files'
    contents, the tokenizer and every setting that changes the result, so a change makes a
    new file.
    """
    if cache is None:
        return tokenize_all(cfg, tokenizer, seed)
    key = dist.broadcast_object(cache_key(cfg, tokenizer, seed) if is_main else None)
    path = Path(cache) / f"tokens-{key}.pt"
    failed, busy = path.with_suffix(".error"), path.with_suffix(".busy")
    if is_main:
        if path.exists():
            data = _read(path)
            if data is not None:
                return data
            # Damaged (a disk that filled, a copy cut short): made again below, not a failed resume.
        Path(cache).mkdir(parents=True, exist_ok=True)
        failed.unlink(missing_ok=True)
        with _Heartbeat(busy):
            try:
                data = tokenize_all(cfg, tokenizer, seed)
            except UserError as err:
                failed.write_text(json.dumps(err.problems))  # the waiting ranks stop with the same message
                raise
            except Exception as err:
                failed.write_text(json.dumps([f"rank 0 failed while tokenizing the data ({type(err).__name__}: "
                                              f"{err}); its log shows where"]))
                raise
            _write(path, data)
        for old in Path(cache).glob("tokens-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        return data
    return _wait_for(path, failed, busy)


def _wait_for(path: Path, failed: Path, busy: Path) -> Data:
    """The other ranks: rank 0's file once it is there (and readable), or rank 0's error."""
    # Rank 0 is alive while its heartbeat changes, as seen by this rank's own clock: the file's
    # time comes from another machine's (rank 0's, or the file server's), which may be minutes or
    # years off; a heartbeat left by an earlier, killed run counts from when this rank began to wait.
    beat, last_change, last_look = None, time.monotonic(), 0.0
    while True:
        if failed.exists():
            raise UserError(*json.loads(failed.read_text()))
        if path.exists() and not busy.exists():
            data = _read(path)
            if data is not None:
                return data
        try:
            info = busy.stat()
            now_beat = (info.st_ino, info.st_mtime_ns)
        except OSError:  # not started yet (or just done)
            now_beat = None
        if now_beat != beat:
            beat, last_change = now_beat, time.monotonic()
        if now_beat is not None and time.monotonic() - last_look >= 1.0:
            last_look = time.monotonic()
            gone = _gone_here(busy)
            if gone:
                raise PeerGone(f"rank 0 ({gone}) ended while it tokenized the data, leaving {busy.name} in "
                               f"{busy.parent}; its own log says why. This rank gives up instead of waiting",
                               hint="fix what rank 0 reports and run the job again: the others follow it")
        silent = time.monotonic() - last_change
        if silent > PEER_SILENT_S:
            raise PeerGone(f"rank 0 stopped tokenizing the data: nothing from it for {silent:.0f} s "
                           f"(its heartbeat {busy.name} in {busy.parent}); it died or hangs, and its own "
                           "log says why. This rank gives up instead of waiting for ever",
                           hint="fix what rank 0 reports and run the job again: the others follow it")
        time.sleep(0.2)


def _process_here() -> dict:
    """What names this process on this machine: host, process id, and the process-id namespace
    (two containers on one node may number processes apart)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = None
    return {"host": os.uname().nodename, "pid": os.getpid(), "pid_namespace": namespace}


def _gone_here(busy: Path) -> str | None:
    """'process N on this node' when the heartbeat's writer ran where this rank runs and is gone:
    a rank on rank 0's node need not wait out its silence."""
    try:
        with open(busy, "rb") as f:
            writer = json.loads(f.read(4096))
        here = _process_here()
        pid = writer["pid"]
        if (here["pid_namespace"] is None or type(pid) is not int or pid <= 0
                or [writer.get("host"), writer.get("pid_namespace")] != [here["host"], here["pid_namespace"]]):
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:  # a zombie is gone too, only not yet reaped
            if f.read(4096).rpartition(b")")[2].split()[:1] != [b"Z"]:
                return None
    except ProcessLookupError:
        pass
    except OSError:  # alive (another user's: not ours to signal), or no /proc
        return None
    return f"process {pid} on this node"


class _Heartbeat:
    """Rank 0's sign of life while it tokenizes: a file whose time it renews every HEARTBEAT_S."""

    def __init__(self, path: Path) -> None:
        self.path, self._done = path, threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ft-tokenize-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def __enter__(self) -> "_Heartbeat":
        self.path.write_text(json.dumps(_process_here()))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


def cache_key(cfg, tokenizer, seed: int) -> str:
    """What the tokenized data depend on: data contents, tokenizer, settings, this code's version."""
    digest = hashlib.sha256()
    settings = cfg.model_dump(mode="json", include={"path", "split", "val_path", "val_split", "val_fraction", "format",
                                                    "limit_samples", "max_seq_length", "packing", "prompt_template"})
    digest.update(json.dumps([_CACHE_VERSION, seed, settings], sort_keys=True).encode())
    for spec in (source.path for source in (*cfg.sources, *cfg.val_sources)):
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


def _read(path: Path) -> Data | None:
    """The tokenized data of `path`, or None when the file is damaged (then it is made again)."""
    try:
        saved = torch.load(path, weights_only=True)
        stats = Stats(**saved["stats"])
        data = Data(_unpack_rows(saved["train"]), _unpack_rows(saved["val"]), stats)
    except FileNotFoundError:
        return None
    except Exception as err:  # a truncated zip, garbage, another layout: whatever torch and we say
        print(f"ft trainer: the token cache {path} cannot be read ({type(err).__name__}); tokenizing again",
              file=sys.stderr, flush=True)
        return None
    stats.notes.append(f"tokenized once, read from {path}")
    return data


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


def source_records(cfg) -> list[list]:
    """The training records of each source of `cfg` (DataConfig), `limit_samples` counted over
    all of them in order."""
    found, left = [], cfg.limit_samples
    for source in cfg.sources:
        records = read_records(source.path, source.split)
        if left is not None:
            records, left = records[:left], max(0, left - len(records))
        found.append(records)
    return found


def held_out(per_source: list[list], fraction: float, seed: int) -> tuple[list[list], list]:
    """(each source's training records, the held-out records of all): `fraction` of each source
    held out by `hold_out`, seeded per source (the first as a single file is)."""
    kept, held = [], []
    for index, records in enumerate(per_source):
        train, val = hold_out(records, fraction, seed if index == 0 else f"{seed}-{index}")
        kept.append(train)
        held += val
    return kept, held


def weighted(per_source: list[list], sources, seed: int, stats: Stats | None = None) -> list:
    """The mixture: each source's records `weight` times (2: twice; 0.5: a seeded half)."""
    mixed = []
    for index, (records, source) in enumerate(zip(per_source, sources)):
        whole, part = int(source.weight), source.weight - int(source.weight)
        chosen = records * whole
        if part and records:
            picked = sorted(random.Random(f"ft-mix-{seed}-{index}").sample(range(len(records)), round(part * len(records))))
            chosen += [records[i] for i in picked]
        mixed += chosen
        if stats is not None and len(sources) > 1:
            stats.notes.append(f"{source.path}: {len(records)} records × {source.weight:g} = {len(chosen)} per epoch")
    return mixed


def tokenize_all(cfg, tokenizer, seed: int) -> Data:
    """Read, validate, split, tokenize and (optionally) pack the job's data."""
    stats = Stats()
    per_source = source_records(cfg)
    if cfg.val_path:
        val_records = [r for source in cfg.val_sources for r in read_records(source.path, source.split)]
        if not val_records:  # no validation would run, and nothing would say so
            raise UserError(f"data.val_path {cfg.val_path} holds no records: give a file with records, or leave "
                            "data.val_path unset to hold out data.val_fraction of the training data")
    else:
        per_source, val_records = held_out(per_source, cfg.val_fraction, seed)
    stats.records = sum(len(records) for records in per_source) + len(val_records)
    records = weighted(per_source, cfg.sources, seed, stats)

    train = tokenize(records, cfg.format, tokenizer, cfg.max_seq_length, cfg.prompt_template, stats)
    val = tokenize(val_records, cfg.format, tokenizer, cfg.max_seq_length, cfg.prompt_template, stats)
    if cfg.packing:
        examples = len(train)
        train = pack(train, cfg.max_seq_length)
        stats.notes.append(f"packed {examples} examples into {len(train)} rows of ≤ {cfg.max_seq_length} tokens")
    return Data(train, val, stats)
