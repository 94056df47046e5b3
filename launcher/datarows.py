"""How long the job's rows are, read from its data where this machine can see it: what `ft plan`
prices a micro batch's activations (and `ft plan`'s time) from, instead of max_seq_length.

    rows = datarows.measure(job)        # Rows(lengths=(…), records=87599, how="…"), or None
    rows.micro_batch_tokens(job, padding_free=True)

The data is visible when every training file is a local .json/.jsonl file (or one ft ships).
Each record's text is its string values and the prompt template's own words (a little more
than the trainer tokenizes: every answer of a SQuAD record, not the first), tokenized with the
model's tokenizer.json when it is here (a local folder, a file ft ships, the staged hub cache)
through the `tokenizers` library, else counted in UTF-8 bytes, which no byte-level tokenizer's
token count exceeds. At most SAMPLE records are read (the first ones: said where it is used).
The lengths are cached under $FT_HOME/cache/rows/ (once FT_HOME exists), keyed by the files' and
tokenizer's size and time, so a second `ft plan` or `ft submit` reads a small JSON file.

No torch and no transformers here: this runs for every `ft submit`.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ftcore import formats, shipped
from ftcore.schema import Job, looks_local

SAMPLE = 20_000  # records read per job: SQuAD's first 20,000 take about a second to tokenize
SPECIALS = 2  # a begin and an end token around each example
PER_TURN = 8  # a chat template's words around each message (role markers, separators)
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Rows:
    lengths: tuple[int, ...]  # tokens per example, longest first (before truncation)
    records: int  # records read
    complete: bool  # every record (False: the first SAMPLE)
    how: str  # "tokenized with …" or "UTF-8 bytes (…)"
    source: str  # the files

    def truncated(self, max_len: int) -> list[int]:
        return [min(n, max_len) for n in self.lengths]

    def micro_batch_tokens(self, job: Job, padding_free: bool) -> int:
        """Tokens of the largest micro batch the data can make: packed rows are full, padding-free
        micro batches hold their rows' tokens, padded ones micro × their longest row."""
        micro, max_len = job.data.micro_batch_size, job.data.max_seq_length
        rows = self.truncated(max_len)
        if job.data.packing or not rows:
            return micro * max_len
        return sum(rows[:micro]) if padding_free else micro * rows[0]

    def mean_tokens(self, max_len: int) -> float:
        rows = self.truncated(max_len)
        return sum(rows) / len(rows) if rows else float(max_len)

    def describe(self, job: Job) -> str:
        rows = self.truncated(job.data.max_seq_length)
        read = f"all {self.records:,} records" if self.complete else f"the first {self.records:,} records"
        return (f"rows from the data: {read} of {self.source}, {self.how}: longest {rows[0] if rows else 0}, "
                f"mean {self.mean_tokens(job.data.max_seq_length):.0f} tokens after truncation to "
                f"{job.data.max_seq_length}")


def data_files(job: Job) -> list[Path] | None:
    """The training data as local files, or None where some of it is not a file here."""
    found = []
    for spec in (source.path for source in job.data.sources):
        if not (spec.startswith(shipped.PREFIX) or looks_local(spec)):
            return None
        try:
            path = Path(shipped.expand(spec)).expanduser()
        except Exception:
            return None
        if not path.is_file() or path.suffix not in (".json", ".jsonl"):
            return None
        found.append(path)
    return found or None


def tokenizer_file(job: Job) -> Path | None:
    """The model's tokenizer.json on this machine, if it is here."""
    spec = job.model.tokenizer or job.model.path
    if not spec:
        return None
    local = Path(shipped.expand(spec)).expanduser()
    if local.is_dir():
        candidate = local / "tokenizer.json"
        return candidate if candidate.is_file() else None
    if looks_local(spec):
        return None
    from launcher import modelconfig

    return modelconfig.cached_file(spec, modelconfig.cache_root(job), "tokenizer.json")


def measure(job: Job) -> Rows | None:
    """The lengths of the job's training examples, or None where the data is not here."""
    files = data_files(job)
    if files is None:
        return None
    tokenizer = tokenizer_file(job)
    key = _key(job, files, tokenizer)
    cached = _cache_dir() / f"{key}.json"
    try:
        saved = json.loads(cached.read_text())
        return Rows(tuple(saved["lengths"]), saved["records"], saved["complete"], saved["how"], saved["source"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    texts, complete = [], True
    for record in _records(files):
        if len(texts) == SAMPLE:
            complete = False
            break
        texts.append(_text(record, job))
    if tokenizer is not None:
        lengths, how = _tokenized(texts, tokenizer)
    else:
        lengths = [len(text.encode("utf-8")) for text in texts]
        how = ("counted in UTF-8 bytes (the model's tokenizer.json is not here; no byte-level tokenizer "
               "makes more tokens than bytes)")
    rows = Rows(tuple(sorted((n + SPECIALS for n in lengths), reverse=True)), len(texts), complete, how,
                ", ".join(str(f) for f in files))
    _save(cached, rows)
    return rows


def _tokenized(texts: list[str], tokenizer: Path) -> tuple[list[int], str]:
    try:
        from tokenizers import Tokenizer

        encoder = Tokenizer.from_file(str(tokenizer))
        lengths = [len(e.ids) for e in encoder.encode_batch(texts, add_special_tokens=False)]
        return lengths, f"tokenized with {tokenizer}"
    except Exception as err:  # no tokenizers library here, or a file it cannot read: bytes bound it
        return ([len(text.encode("utf-8")) for text in texts],
                f"counted in UTF-8 bytes ({tokenizer} could not be used here: {type(err).__name__})")


def _records(files: list[Path]) -> Iterator[dict[str, Any]]:
    for path in files:
        try:
            if path.suffix == ".jsonl":
                with open(path, "rb") as handle:
                    for raw in handle:
                        if raw.strip():
                            record = json.loads(raw)
                            if isinstance(record, dict):
                                yield record
            else:
                whole = json.loads(path.read_bytes())
                items = whole.get("data", []) if isinstance(whole, dict) else whole
                yield from (item for item in items if isinstance(item, dict))
        except (OSError, ValueError):
            return  # the trainer reads it again and names the bad line


def _text(record: dict[str, Any], job: Job) -> str:
    fmt = formats.FORMATS.get(job.data.format)
    template = job.data.prompt_template or (fmt.prompt if fmt else None) or ""
    words = "".join(literal for literal, *_ in string.Formatter().parse(template))
    return words + " ".join(_strings(record))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield "x" * PER_TURN
            yield from _strings(item)


def _key(job: Job, files: list[Path], tokenizer: Path | None) -> str:
    parts: list[Any] = [_CACHE_VERSION, SAMPLE, job.data.format, job.data.prompt_template]
    for path in [*files, *([tokenizer] if tokenizer else [])]:
        stat = path.stat()
        parts.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _cache_dir() -> Path:
    from launcher import paths

    return paths.ft_home() / "cache" / "rows"


def _save(path: Path, rows: Rows) -> None:
    from launcher import paths

    if not paths.ft_home().is_dir():
        return  # a command that may yet be refused makes no FT_HOME of its own; the first job does
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_text(json.dumps({"lengths": rows.lengths, "records": rows.records, "complete": rows.complete,
                                   "how": rows.how, "source": rows.source}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only FT_HOME: measured again next time
