"""Reading training records: a local .json/.jsonl file, or a staged hub dataset's files.

Each record keeps where it came from (``data.jsonl line 12``), so every later error can name it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ftcore import shipped
from ftcore.errors import UserError


@dataclass(frozen=True)
class Record:
    where: str  # "data.jsonl line 12": how errors name this record
    fields: dict[str, Any]


def read_records(path: str, split: str = "train") -> list[Record]:
    """Read a local .json/.jsonl file, or a split of a staged hub dataset (trainer/hub_data.py)."""
    path = shipped.expand(path)
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
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = _utf8(raw, f"{path} line {number}")
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number}: not valid JSON ({e.msg})") from None
            if not isinstance(value, dict):
                raise UserError(f"{path} line {number}: expected a JSON object, got {type(value).__name__}")
            yield Record(f"{path} line {number}", value)


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 4]!r}); "
                        "convert the file, e.g. iconv -f latin1 -t utf-8") from None


def _read_json(path: Path) -> list[Record]:
    try:
        value = json.loads(_utf8(path.read_bytes(), str(path)))
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
