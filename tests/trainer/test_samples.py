"""trainer.samples: prompt masking, the eos after the answer, truncation and dropping."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from trainer_helpers import SQUAD, tokenized, trained_text

from trainer.records import Record


def test_prompt_is_masked_and_answer_plus_eos_is_trained(tok):
    (sample,), _ = tokenized(tok, [Record("r", SQUAD)], "squad")
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()
    prompt = tok("Context: Ada lives in Oslo.\nQuestion: Where does Ada live?\nAnswer:")["input_ids"]  # with bos
    answer = tok(" Oslo", add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tok.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [tok.eos_token_id]
    assert trained_text(tok, sample) == " Oslo</s>"


def test_truncation_and_dropping_are_counted(tok):
    long_context = {**SQUAD, "context": "Ada lives in Oslo. " * 20}
    records = [Record("a", SQUAD), Record("b", long_context)]
    samples, stats = tokenized(tok, records, "squad", max_len=40)
    assert (stats.truncated, stats.dropped) == (1, 1)  # truncated inside the prompt: nothing to learn
    assert len(samples) == 1 and len(samples[0]) <= 40
    samples, stats = tokenized(tok, [Record("a", SQUAD)], "squad", max_len=len(samples[0]) - 1)
    assert (stats.truncated, stats.dropped) == (1, 0)  # lost the eos, kept some answer
