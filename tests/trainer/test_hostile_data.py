"""Data as it arrives from the wild: wrongly shaped SQuAD records, non-UTF-8 files, one huge
record, prompt templates that do not fit a record. Each is an error that names the record,
or (the huge record) is cut before the tokenizer reads all of it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trainer_helpers import SQUAD, tokenized, trained_text, write_jsonl

from ftcore.errors import UserError
from trainer import samples
from trainer.records import Record, read_records

_ANY = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["text", "x"]), inner, max_size=2)),
                    max_leaves=6)


def _first_answer(answers):
    """SQuAD's answer as the trainer must read it, or None when the shape is wrong."""
    if isinstance(answers, dict):
        texts = answers.get("text")
    elif isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
        texts = [a.get("text") for a in answers]
    else:
        return None
    if not isinstance(texts, list) or not texts or not isinstance(texts[0], str) or not texts[0].strip():
        return None
    return texts[0].strip()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers=st.one_of(_ANY, st.builds(lambda t: {"text": t}, _ANY), st.builds(lambda t: [{"text": t}], _ANY)),
       context=st.one_of(st.just("Ada lives in Oslo."), _ANY))
def test_squad_shapes_train_on_the_answer_or_name_the_record(answers, context, tok):
    record = Record("data.jsonl line 7", {"context": context, "question": "Where?", "answers": answers})
    expected = _first_answer(answers)
    if expected is None or not isinstance(context, str):
        with pytest.raises(UserError, match="data.jsonl line 7"):
            tokenized(tok, [record], "squad")
        return
    (sample,), _ = tokenized(tok, [record], "squad", max_len=512)
    assert trained_text(tok, sample).strip().removesuffix("</s>").strip() == expected


def test_answers_text_as_one_string_is_an_error_not_its_first_letter(tok):
    record = Record("d.jsonl line 3", {**SQUAD, "answers": {"text": "Oslo", "answer_start": [13]}})
    with pytest.raises(UserError, match=r"d\.jsonl line 3: answers.text should be a list of answers, not one string"):
        tokenized(tok, [record], "squad")


@pytest.mark.parametrize("fmt, fields, key", [
    ("alpaca", {"instruction": "Say hi", "output": {"text": "hi"}}, "output"),
    ("alpaca", {"instruction": ["a"], "output": "hi"}, "instruction"),
    ("jsonl", {"prompt": "Q", "completion": ["A"]}, "completion"),
    ("jsonl", {"prompt": 5, "completion": "A"}, "prompt"),
])
def test_other_formats_name_a_field_of_the_wrong_shape(fmt, fields, key, tok):
    with pytest.raises(UserError, match=f"r.jsonl line 2: '{key}' should be text"):
        tokenized(tok, [Record("r.jsonl line 2", fields)], fmt)


@pytest.mark.parametrize("template", ["{context:d} {question}", "{context!r:>{question}}"])
def test_a_template_that_does_not_fit_a_record_names_it(template, tok):
    with pytest.raises(UserError, match="r.jsonl line 1: prompt_template cannot be filled"):
        tokenized(tok, [Record("r.jsonl line 1", SQUAD)], "squad", template=template)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_data_is_named_with_its_line(suffix, tmp_path):
    path = tmp_path / f"latin1{suffix}"
    good = json.dumps(SQUAD).encode()
    bad = json.dumps({**SQUAD, "context": "Zoë lives in Oslo."}, ensure_ascii=False).encode("utf-8").replace("ë".encode(), "ë".encode("latin-1"))
    path.write_bytes(good + b"\n" + bad + b"\n" if suffix == ".jsonl" else b"[" + good + b", " + bad + b"]")
    where = "line 2" if suffix == ".jsonl" else path.name
    with pytest.raises(UserError, match=f"{where}.*not UTF-8 text"):
        read_records(str(path))


def test_a_huge_record_is_cut_before_the_tokenizer_reads_it_all(tok, monkeypatch):
    huge = {**SQUAD, "context": "Ada lives in Oslo. " * 200_000}  # 3.8 million characters
    max_len = 64
    seen = []
    real_call = type(tok).__call__

    class Spy(type(tok)):
        def __call__(self, text, *args, **kwargs):
            seen.extend([text] if isinstance(text, str) else text)
            return real_call(self, text, *args, **kwargs)

    original_class = tok.__class__
    tok.__class__ = Spy
    try:
        cut, stats = tokenized(tok, [Record("big.jsonl line 1", huge)], "squad", max_len=max_len)
    finally:
        tok.__class__ = original_class
    assert max(len(t) for t in seen) <= max_len * samples.MAX_CHARS_PER_TOKEN
    assert stats.dropped == 1  # the prompt alone fills max_len: nothing left to learn, as before
    # The cut changes nothing that survives truncation: the same sample with and without it.
    long_answer = Record("x", {**SQUAD, "context": "Oslo. ", "answers": {"text": ["word " * 5000]}})
    (cut,), _ = tokenized(tok, [long_answer], "squad", max_len=max_len)
    monkeypatch.setattr(samples, "MAX_CHARS_PER_TOKEN", 10**9)
    (whole,), _ = tokenized(tok, [long_answer], "squad", max_len=max_len)
    assert len(cut) == max_len and torch.equal(cut.input_ids, whole.input_ids) and torch.equal(cut.labels, whole.labels)


def test_a_tokenizer_whose_ids_pass_the_vocabulary_is_refused_before_training(tmp_path):
    """Its token count fits the model (384), but one id has no embedding row: refused with the
    way out, through `python -m trainer`, not a crash in the first forward."""
    import shutil
    import subprocess
    import sys

    from trainer_helpers import REPO, TINY_TOKENIZER, clean_env, tiny_job, write_config

    from ftcore import exits

    gapped = tmp_path / "tokenizer"
    shutil.copytree(TINY_TOKENIZER, gapped)
    spec = json.loads((gapped / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    token = max(vocab, key=vocab.get)  # the last plain token moves past the model's 384 rows
    vocab[token] = 1000
    (gapped / "tokenizer.json").write_text(json.dumps(spec))
    raw = tiny_job(model={"tokenizer": str(gapped)}, trainer={"max_steps": 1})
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(write_config(tmp_path / "run", raw))],
                            cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == exits.USER_ERROR, result.stderr[-2000:]
    assert "produces ids up to 1000" in result.stderr and "vocab_size is 384" in result.stderr
    assert "Traceback" not in result.stderr
