"""trainer.formats: squad, alpaca, prompt/completion and chat records → prompt and answer; malformed records."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from trainer_helpers import SQUAD, tokenized, trained_text, write_jsonl

from ftcore.errors import UserError
from trainer.records import Record, read_records


def test_alpaca_with_and_without_input(tok):
    records = [
        Record("a", {"instruction": "Add.", "input": "2 and 3", "output": "5"}),
        Record("b", {"instruction": "Say hi.", "input": "", "output": "hi"}),
    ]
    (with_input, without), _ = tokenized(tok, records, "alpaca")
    assert "### Input:\n2 and 3" in tok.decode(with_input.input_ids.tolist())
    assert "### Input" not in tok.decode(without.input_ids.tolist())
    assert trained_text(tok, with_input) == "5</s>"


def test_prompt_completion_and_custom_template(tok):
    records = [Record("r", {"prompt": "Q: hi", "completion": " A: yo", "lang": "en"})]
    (plain,), _ = tokenized(tok, records, "jsonl")
    assert trained_text(tok, plain) == " A: yo</s>"
    (templated,), _ = tokenized(tok, records, "jsonl", template="[{lang}] {prompt}")
    assert tok.decode(templated.input_ids.tolist()).startswith("<s>[en] Q: hi")


def test_chat_trains_on_assistant_turns_only(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Norway?"},
        {"role": "assistant", "content": "Oslo"},
        {"role": "user", "content": "Of Peru?"},
        {"role": "assistant", "content": "Lima"},
    ]
    (sample,), _ = tokenized(tok, [Record("r", {"messages": messages})], "jsonl")
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(sample.input_ids.tolist()) == full
    # Assistant content and its end-of-turn, never the headers or the user's words.
    assert trained_text(tok, sample) == "Oslo</s>\nLima</s>\n"


@pytest.mark.parametrize(
    "fmt, bad, missing",
    [
        ("squad", {"context": "c", "answers": {"text": ["a"]}}, "'question'"),
        ("alpaca", {"instruction": "i", "input": ""}, "'output'"),
        ("jsonl", {"prompt": "p"}, "'completion'"),
    ],
)
def test_missing_key_names_file_line_and_key(tmp_path, tok, fmt, bad, missing):
    good = {"squad": SQUAD, "alpaca": {"instruction": "i", "output": "o"}, "jsonl": {"prompt": "p", "completion": "c"}}[fmt]
    path = write_jsonl(tmp_path / "d.jsonl", [good, good, bad])
    with pytest.raises(UserError) as e:
        tokenized(tok, read_records(str(path)), fmt)
    assert f"{path} line 3" in str(e.value) and missing in str(e.value)


def test_every_malformed_record_is_reported_at_once(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p"}, {"completion": "c"}, {"prompt": "p", "completion": "c"}])
    with pytest.raises(UserError) as e:
        tokenized(tok, read_records(str(path)), "jsonl")
    assert "line 1" in str(e.value) and "line 2" in str(e.value) and "line 3" not in str(e.value)


def test_chat_without_assistant_turn_is_an_error(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match="line 1: no assistant message"):
        tokenized(tok, read_records(str(path)), "jsonl")


def test_one_registry_names_the_formats_everywhere():
    """A format declared in ftcore.formats has a segmenter in the trainer, the schema accepts
    exactly the declared names, and `ft eval` offers them."""
    import typing

    from ftcore import formats
    from ftcore.schema import DataConfig
    from fttools import evaluate
    from trainer.formats import SEGMENTERS

    assert set(SEGMENTERS) == set(formats.FORMATS)
    assert set(typing.get_args(DataConfig.model_fields["format"].annotation)) == set(formats.FORMATS)
    assert evaluate.NAMES is formats.NAMES
    for spec in formats.FORMATS.values():
        if spec.prompt_fields is not None:  # ft generate builds the prompt from these fields alone
            required, optional = spec.prompt_fields
            assert spec.prompt.format(**{k: "x" for k in required + optional})
