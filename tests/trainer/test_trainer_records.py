"""trainer.records: reading .json/.jsonl files (three SQuAD layouts), ft's shipped files, errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import SQUAD, TINY_QA, tokenized, write_jsonl

from ftcore import shipped
from ftcore.errors import UserError
from trainer.records import read_records


def test_shipped_files_resolve():
    assert Path(shipped.expand("ft:tiny_qa.jsonl")) == TINY_QA
    assert len(read_records("ft:tiny_qa.jsonl")) == 200
    with pytest.raises(UserError, match="not a file ft ships"):
        shipped.expand("ft:nope.jsonl")


def test_squad_three_layouts_give_the_same_examples(tmp_path, tok):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [SQUAD])
    listed = tmp_path / "b.json"
    listed.write_text(json.dumps([SQUAD]))
    original = tmp_path / "c.json"
    original.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": SQUAD["context"], "qas": [{"id": "q1", "question": SQUAD["question"], "answers": [{"text": "Oslo", "answer_start": 13}]}]}
    ]}]}))
    samples = [tokenized(tok, read_records(str(p)), "squad")[0][0] for p in (jsonl, listed, original)]
    assert all(torch.equal(s.input_ids, samples[0].input_ids) and torch.equal(s.labels, samples[0].labels) for s in samples)


def test_invalid_json_line_and_missing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(SQUAD) + "\n{not json\n")
    with pytest.raises(UserError, match=r"d\.jsonl line 2: not valid JSON"):
        read_records(str(path))
    with pytest.raises(UserError, match="does not exist"):
        read_records(str(tmp_path / "missing.jsonl"))


def test_json_list_errors_name_the_index(tmp_path, tok):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([SQUAD, {"context": "c", "question": "q", "answers": {"text": []}}]))
    with pytest.raises(UserError, match=r"d\.json record \[1\].*answers\.text\[0\]"):
        tokenized(tok, read_records(str(path)), "squad")
