"""trainer.data: formats, malformed files, prompt masking, packing, batching. No model needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import TINY_QA, tiny_tokenizer

from ftcore.errors import UserError
from trainer import data as D


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def trained_text(tok, sample: D.Sample) -> str:
    ids = [i for i, l in zip(sample.input_ids.tolist(), sample.labels.tolist()) if l != D.IGNORE_INDEX]
    return tok.decode(ids)


def tokenize(tok, records, fmt, max_len=256, template=None):
    stats = D.Stats()
    return D.tokenize(records, fmt, tok, max_len, template, stats), stats


SQUAD = {"context": "Ada lives in Oslo.", "question": "Where does Ada live?", "answers": {"text": ["Oslo"], "answer_start": [13]}}


# --- formats ---------------------------------------------------------------------------------


def test_shipped_files_resolve():
    assert Path(D.resolve("ft:tiny_qa.jsonl")) == TINY_QA
    assert len(D.read_records("ft:tiny_qa.jsonl")) == 200
    with pytest.raises(UserError, match="not a file ft ships"):
        D.resolve("ft:nope.jsonl")


def test_squad_three_layouts_give_the_same_examples(tmp_path, tok):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [SQUAD])
    listed = tmp_path / "b.json"
    listed.write_text(json.dumps([SQUAD]))
    original = tmp_path / "c.json"
    original.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": SQUAD["context"], "qas": [{"id": "q1", "question": SQUAD["question"], "answers": [{"text": "Oslo", "answer_start": 13}]}]}
    ]}]}))
    samples = [tokenize(tok, D.read_records(str(p)), "squad")[0][0] for p in (jsonl, listed, original)]
    assert all(torch.equal(s.input_ids, samples[0].input_ids) and torch.equal(s.labels, samples[0].labels) for s in samples)


def test_prompt_is_masked_and_answer_plus_eos_is_trained(tok):
    (sample,), _ = tokenize(tok, [D.Record("r", SQUAD)], "squad")
    ids, labels = sample.input_ids.tolist(), sample.labels.tolist()
    prompt = tok("Context: Ada lives in Oslo.\nQuestion: Where does Ada live?\nAnswer:")["input_ids"]  # with bos
    answer = tok(" Oslo", add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tok.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [tok.eos_token_id]
    assert trained_text(tok, sample) == " Oslo</s>"


def test_alpaca_with_and_without_input(tok):
    records = [
        D.Record("a", {"instruction": "Add.", "input": "2 and 3", "output": "5"}),
        D.Record("b", {"instruction": "Say hi.", "input": "", "output": "hi"}),
    ]
    (with_input, without), _ = tokenize(tok, records, "alpaca")
    assert "### Input:\n2 and 3" in tok.decode(with_input.input_ids.tolist())
    assert "### Input" not in tok.decode(without.input_ids.tolist())
    assert trained_text(tok, with_input) == "5</s>"


def test_prompt_completion_and_custom_template(tok):
    records = [D.Record("r", {"prompt": "Q: hi", "completion": " A: yo", "lang": "en"})]
    (plain,), _ = tokenize(tok, records, "jsonl")
    assert trained_text(tok, plain) == " A: yo</s>"
    (templated,), _ = tokenize(tok, records, "jsonl", template="[{lang}] {prompt}")
    assert tok.decode(templated.input_ids.tolist()).startswith("<s>[en] Q: hi")


def test_chat_trains_on_assistant_turns_only(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Norway?"},
        {"role": "assistant", "content": "Oslo"},
        {"role": "user", "content": "Of Peru?"},
        {"role": "assistant", "content": "Lima"},
    ]
    (sample,), _ = tokenize(tok, [D.Record("r", {"messages": messages})], "jsonl")
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(sample.input_ids.tolist()) == full
    # Assistant content and its end-of-turn, never the headers or the user's words.
    assert trained_text(tok, sample) == "Oslo</s>\nLima</s>\n"


# --- malformed data: the error names the file, the line and what is missing ----------------------


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
        tokenize(tok, D.read_records(str(path)), fmt)
    assert f"{path} line 3" in str(e.value) and missing in str(e.value)


def test_every_malformed_record_is_reported_at_once(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p"}, {"completion": "c"}, {"prompt": "p", "completion": "c"}])
    with pytest.raises(UserError) as e:
        tokenize(tok, D.read_records(str(path)), "jsonl")
    assert "line 1" in str(e.value) and "line 2" in str(e.value) and "line 3" not in str(e.value)


def test_json_list_errors_name_the_index(tmp_path, tok):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([SQUAD, {"context": "c", "question": "q", "answers": {"text": []}}]))
    with pytest.raises(UserError, match=r"d\.json record \[1\].*answers\.text\[0\]"):
        tokenize(tok, D.read_records(str(path)), "squad")


def test_invalid_json_line_and_missing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(SQUAD) + "\n{not json\n")
    with pytest.raises(UserError, match=r"d\.jsonl line 2: not valid JSON"):
        D.read_records(str(path))
    with pytest.raises(UserError, match="does not exist"):
        D.read_records(str(tmp_path / "missing.jsonl"))


def test_chat_without_assistant_turn_is_an_error(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match="line 1: no assistant message"):
        tokenize(tok, D.read_records(str(path)), "jsonl")


# --- truncation, splits ---------------------------------------------------------------------------


def test_truncation_and_dropping_are_counted(tok):
    long_context = {**SQUAD, "context": "Ada lives in Oslo. " * 20}
    records = [D.Record("a", SQUAD), D.Record("b", long_context)]
    samples, stats = tokenize(tok, records, "squad", max_len=40)
    assert (stats.truncated, stats.dropped) == (1, 1)  # truncated inside the prompt: nothing to learn
    assert len(samples) == 1 and len(samples[0]) <= 40
    samples, stats = tokenize(tok, [D.Record("a", SQUAD)], "squad", max_len=len(samples[0]) - 1)
    assert (stats.truncated, stats.dropped) == (1, 0)  # lost the eos, kept some answer


def _cfg(**kw):
    from ftcore.schema import DataConfig

    return DataConfig(**{"path": "ft:tiny_qa.jsonl", "format": "squad", "max_seq_length": 64, **kw})


def test_val_fraction_holds_out_the_same_records_every_time(tok):
    a = D.load(_cfg(val_fraction=0.1), tok, seed=3)
    b = D.load(_cfg(val_fraction=0.1), tok, seed=3)
    c = D.load(_cfg(val_fraction=0.1), tok, seed=4)
    assert (len(a.train), len(a.val)) == (180, 20)
    assert [s.input_ids.tolist() for s in a.val] == [s.input_ids.tolist() for s in b.val]
    assert [s.input_ids.tolist() for s in a.val] != [s.input_ids.tolist() for s in c.val]
    train_ids = {tuple(s.input_ids.tolist()) for s in a.train}
    assert not any(tuple(s.input_ids.tolist()) in train_ids for s in a.val)


def test_val_path_and_limit_samples(tmp_path, tok):
    val = write_jsonl(tmp_path / "val.jsonl", [SQUAD] * 3)
    d = D.load(_cfg(val_path=str(val), limit_samples=10), tok, seed=0)
    assert (len(d.train), len(d.val)) == (10, 3)
    assert "10 training rows, 3 validation examples" in d.summary()


# --- packing and collation, token by token ------------------------------------------------------


def _sample(ids, labels):
    return D.Sample(torch.tensor(ids, dtype=torch.int32), torch.tensor(labels, dtype=torch.int32), (len(ids),))


def test_pack_rows_positions_labels_and_block_mask():
    a = _sample([1, 10, 11, 12], [-100, -100, 11, 12])
    b = _sample([1, 20, 21], [-100, 21, 21])
    c = _sample([1, 30, 31, 32, 33], [1, -100, 31, 32, 33])  # first label set on purpose: packing must mask it
    rows = D.pack([a, b, c], max_len=8)
    assert [r.seq_lens for r in rows] == [(4, 3), (5,)]
    assert rows[0].input_ids.tolist() == [1, 10, 11, 12, 1, 20, 21]
    assert rows[0].labels.tolist() == [-100, -100, 11, 12, -100, 21, 21]
    assert rows[1].labels.tolist() == [-100, -100, 31, 32, 33]

    batch = D.collate(rows, pad_id=0, attn_implementation="sdpa")
    assert batch["input_ids"].shape == (2, 7)  # longest row, not max_len
    assert batch["input_ids"][1].tolist() == [1, 30, 31, 32, 33, 0, 0]
    assert batch["labels"][1].tolist() == [-100, -100, 31, 32, 33, -100, -100]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 4, 0, 1]]
    mask = batch["attention_mask"][:, 0]
    for row, blocks in enumerate([[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]):
        for q in range(7):
            for k in range(7):
                assert bool(mask[row, q, k]) == (k <= q and blocks[q] == blocks[k]), (row, q, k)

    eager = D.collate(rows, pad_id=0, attn_implementation="eager", mask_dtype=torch.float32)["attention_mask"][:, 0]
    assert torch.equal(eager == 0, mask)
    flash = D.collate(rows, pad_id=0, attn_implementation="flash_attention_2")
    assert "attention_mask" not in flash and "position_ids" in flash


def test_unpacked_batches_pad_to_longest_and_mask_only_when_needed():
    a, b = _sample([1, 2, 3], [-100, 2, 3]), _sample([1, 2], [-100, 2])
    batch = D.collate([a, b], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 2, -100]]
    assert "attention_mask" not in D.collate([a, a], pad_id=0)  # nothing padded: sdpa's causal fast path


# --- the order of batches -----------------------------------------------------------------------


def _numbered(n):
    return [_sample([i, i], [-100, i]) for i in range(n)]


def ids_of(batches):
    return [[int(s.input_ids[0]) for s in mb] for mb in batches]


def test_global_batch_is_the_same_whatever_the_layout():
    samples = _numbered(37)
    one = D.StepBatches(samples, 8, 8, 1, 0, seed=1, shuffle=True)
    for step in (0, 3, 4, 9):  # 4 steps per epoch: 9 is in epoch 2
        expected = sorted(int(s.input_ids[0]) for s in one.global_batch_samples(step))
        for micro, dp in [(1, 1), (2, 2), (4, 2), (1, 8)]:
            seen = []
            for rank in range(dp):
                plan = D.StepBatches(samples, 8, micro, dp, rank, seed=1, shuffle=True)
                mbs = plan.micro_batches(step)
                assert len(mbs) == 8 // (micro * dp) and all(len(mb) == micro for mb in mbs)
                seen += [i for mb in ids_of(mbs) for i in mb]
            assert sorted(seen) == expected


def test_order_is_seeded_per_epoch_and_positions_are_exact():
    plan = D.StepBatches(_numbered(37), 8, 8, 1, 0, seed=1, shuffle=True)
    assert plan.steps_per_epoch == 4
    assert plan.position(0) == (0, 0) and plan.position(5) == (1, 8)
    epoch0 = [i for s in range(4) for i in ids_of(plan.micro_batches(s))[0]]
    assert len(set(epoch0)) == 32  # no repeats within an epoch
    assert ids_of(plan.micro_batches(4)) != ids_of(plan.micro_batches(0))  # reshuffled
    again = D.StepBatches(_numbered(37), 8, 8, 1, 0, seed=1, shuffle=True)
    assert ids_of(again.micro_batches(6)) == ids_of(plan.micro_batches(6))
    unshuffled = D.StepBatches(_numbered(37), 8, 4, 1, 0, seed=1, shuffle=False)
    assert ids_of(unshuffled.micro_batches(1)) == [[8, 9, 10, 11], [12, 13, 14, 15]]


def test_too_little_data_for_one_batch_is_a_config_error():
    with pytest.raises(UserError, match="fewer than data.global_batch_size=8"):
        D.StepBatches(_numbered(5), 8, 1, 1, 0, seed=0, shuffle=True)


def test_validation_batches_are_even_across_ranks():
    samples = _numbered(5)
    per_rank = [D.val_batches(samples, 2, 2, r, None) for r in range(2)]
    assert [len(b) for b in per_rank] == [2, 2]  # 3 batches over 2 ranks: one filler
    counted = [ids_of([b]) for rank in per_rank for b, counts in rank if counts]
    assert sorted(i for c in counted for mb in c for i in mb) == [0, 1, 2, 3, 4]
    assert len(D.val_batches(samples, 2, 1, 0, 2)) == 2  # limit_val_batches


# --- properties ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=20), max_len=st.integers(12, 30))
def test_packing_keeps_every_token_in_order_and_masks_only_example_starts(lengths, max_len):
    examples = [_sample(list(range(100 * i, 100 * i + n)), list(range(100 * i, 100 * i + n))) for i, n in enumerate(lengths)]
    rows = D.pack(examples, max_len)
    assert all(len(r) <= max_len and sum(r.seq_lens) == len(r) for r in rows)
    assert torch.cat([r.input_ids for r in rows]).tolist() == [t for ex in examples for t in ex.input_ids.tolist()]
    labels = torch.cat([r.labels for r in rows]).tolist()
    starts = {sum(lengths[:i]) for i in range(len(lengths))}
    assert [i for i, l in enumerate(labels) if l == D.IGNORE_INDEX] == sorted(starts)
    # The loss covers the same positions as the examples alone: the first label of each never counted.
    assert sum(r.answer_tokens for r in rows) == sum(ex.answer_tokens for ex in examples)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(8, 40), step=st.integers(0, 30), layout=st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (1, 4)]))
def test_every_rank_and_micro_batch_together_cover_the_global_batch(n, step, layout):
    micro, dp = layout
    samples = _numbered(n)
    expected = sorted(int(s.input_ids[0]) for s in D.StepBatches(samples, 8, 8, 1, 0, 5, True).global_batch_samples(step))
    seen = sorted(i for r in range(dp) for mb in ids_of(D.StepBatches(samples, 8, micro, dp, r, 5, True).micro_batches(step)) for i in mb)
    assert seen == expected


def test_length_grouping_sorts_within_the_global_batch_only():
    samples = [_sample([i] * (1 + (i * 7) % 13), [i] * (1 + (i * 7) % 13)) for i in range(40)]
    for micro, dp in [(2, 1), (2, 2), (1, 4)]:
        plans = [D.StepBatches(samples, 16, micro, dp, r, seed=3, shuffle=True) for r in range(dp)]
        plain = D.StepBatches(samples, 16, micro, dp, 0, seed=3, shuffle=True, group_by_length=False)
        for step in (0, 1, 3):  # step 3 is in the second epoch
            rounds = list(zip(*[p.micro_batches(step) for p in plans]))  # (rank 0's mb, rank 1's mb, ...) per round
            dealt = [s for r in rounds for mb in r for s in mb]
            assert [len(s) for s in dealt] == sorted(len(s) for s in plain.global_batch_samples(step))
            assert sorted(int(s.input_ids[0]) for s in dealt) == sorted(int(s.input_ids[0]) for s in plain.global_batch_samples(step))
    again = D.StepBatches(samples, 16, 2, 1, 0, seed=3, shuffle=True)
    first = D.StepBatches(samples, 16, 2, 1, 0, seed=3, shuffle=True)
    assert ids_of(again.micro_batches(2)) == ids_of(first.micro_batches(2))  # a pure function of the step
