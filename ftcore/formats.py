"""The data formats: one registry of what each `data.format` reads, so a data file can be
checked before submitting, and the schema, the trainer and the model tools agree.

    squad   context, question, answers   (SQuAD v1.1's own {"data": [...]} layout too)
    alpaca  instruction, output          (input optional)
    jsonl   prompt, completion — or chat messages
    preference  prompt, chosen, rejected — strings, or TRL's conversational form (message lists;
            the prompt may be left implicit: the messages chosen and rejected share); what
            objective.name=dpo and orpo train on

A new format is an entry in FORMATS here (its fields, the fields of its prompt, its default
prompt template) and its segmenter in trainer/formats.py, registered under the same name
(a test holds the two registries to the same names).

The launcher reads the first records of a local data file and names the format that fits
when the configured one does not (a wrong format otherwise fails minutes later, on the
cluster, after the model loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

@dataclass(frozen=True)
class Format:
    name: str
    fields: tuple[tuple[str, ...], ...]  # alternative sets of required fields (a record holds every one of a set)
    # The record fields its prompt is built from, (required, optional): what `ft generate` takes
    # as options. None: a prompt is given whole.
    prompt_fields: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    prompt: str | None = None  # the default prompt template (data.prompt_template replaces it)
    prompt_short: str | None = None  # the default when the optional prompt fields are empty
    pairs: bool = False  # preference pairs (a chosen and a rejected answer), not one answer per record


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("squad", (("context", "question", "answers"),), (("context", "question"), ()),
           "Context: {context}\nQuestion: {question}\nAnswer:"),
    Format("alpaca", (("instruction", "output"),), (("instruction",), ("input",)),
           "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
           "### Instruction:\n{instruction}\n\n### Response:\n"),
    Format("jsonl", (("prompt", "completion"), ("messages",))),
    Format("preference", (("prompt", "chosen", "rejected"), ("chosen", "rejected")), pairs=True),
)}
PAIRS = "preference"  # the preference-pair format (TRL's "preference" dataset type)
NAMES = tuple(FORMATS)
# format → alternative sets of required fields.
FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {name: f.fields for name, f in FORMATS.items()}
FIRST_RECORDS = 5
_MAX_JSON_BYTES = 256 * 2**20  # a .json file is read whole: beyond this, leave it to the trainer
_MAX_LINE_BYTES = 4 * 2**20  # the login node reads no longer line of a .jsonl file


def fits(fmt: str, record: dict[str, Any]) -> bool:
    return any(all(record.get(name) is not None for name in names) for names in FIELDS.get(fmt, ()))


def needs(fmt: str) -> str:
    return " or ".join(", ".join(names) for names in FIELDS[fmt])


def first_records(path: Path, count: int = FIRST_RECORDS) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for the first records of a .jsonl or .json file; [] when unreadable here
    (the trainer reports malformed files with the line)."""
    found: list[tuple[str, dict[str, Any]]] = []
    try:
        if path.suffix == ".jsonl":
            with open(path, "rb") as handle:
                for number in range(1, 10**9):
                    raw = handle.readline(_MAX_LINE_BYTES + 1)  # bounded: one line may be 600 MB
                    if not raw:
                        break
                    if len(raw) > _MAX_LINE_BYTES:
                        break  # a line this long is the trainer's to read (and name)
                    line = raw.decode("utf-8")
                    if line.strip():
                        record = json.loads(line)
                        if isinstance(record, dict):
                            found.append((f"line {number}", record))
                    if len(found) >= count:
                        break
        elif path.suffix == ".json" and path.stat().st_size <= _MAX_JSON_BYTES:
            value = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(value, dict) and isinstance(value.get("data"), list):  # SQuAD's own layout
                value = [{"context": p.get("context"), **qa} for a in value["data"][:count]
                         for p in a.get("paragraphs", [])[:count] for qa in p.get("qas", [])[:count]]
            if isinstance(value, list):
                found = [(f"record [{i}]", r) for i, r in enumerate(value[:count]) if isinstance(r, dict)]
    except (OSError, ValueError, AttributeError, TypeError):
        return found
    return found[:count]


def holds_nothing(path: Path) -> bool:
    """The file holds no record at all: empty, blank lines only, or an empty JSON list."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2**20 + 1)
    except OSError:
        return False
    return len(head) <= 2**20 and head.strip() in (b"", b"[]")


def mismatch(path: Path, fmt: str, setting: str = "data.format=") -> str | None:
    """A problem when the file's first records do not fit `fmt`, naming the format that does
    (as `setting` spells it: `data.format=`, or `--format ` for ft eval)."""
    records = first_records(path)
    wrong = [(where, record) for where, record in records if not fits(fmt, record)]
    if fmt not in FIELDS or not wrong:
        return None
    where, record = wrong[0]
    fitting = [f for f in FIELDS if all(fits(f, r) for _, r in records)]
    advice = (f"{setting}{fitting[0]} fits them" if fitting else
              "no format fits them (" + "; ".join(f"{f} needs {needs(f)}" for f in FIELDS) + ")")
    present = ", ".join(sorted(record)) or "none"
    return (f"{path}: its records do not fit {setting}{fmt}, which needs {needs(fmt)} ({where} has {present}); "
            f"{advice}")
