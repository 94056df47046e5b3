"""Preference tuning: the data format, the schema's rules, the losses, and tiny_dpo training.

TRL's DPOTrainer is the reference for the numbers (tests/trainer/test_trl_equivalence.py); here:
what the records become, what is refused, and that DPO and ORPO train (loss falls, margin rises).
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import REPO, read_metrics, tiny_job, tiny_tokenizer, train, write_config

from ftcore import records
from ftcore.errors import UserError
from launcher import config
from trainer.records import Record

pytestmark = pytest.mark.train

PREFS = REPO / "factories" / "data" / "tiny_prefs.jsonl"


def pairs_of(rows: list[dict], tmp_path, template=None, max_len=64):
    from trainer.samples import Stats, tokenize

    records_ = [Record(f"pairs.jsonl line {i + 1}", row) for i, row in enumerate(rows)]
    return tokenize(records_, "preference", tiny_tokenizer(), max_len, template, Stats())


def answers(sample, tokenizer) -> list[str]:
    """The trained text of each sequence of a sample."""
    out, start = [], 0
    for n in sample.seq_lens:
        labels = sample.labels[start:start + n]
        out.append(tokenizer.decode(labels[labels != -100].tolist()))
        start += n
    return out


# --- the data format ------------------------------------------------------------------------------


def test_a_string_pair_is_one_sample_of_two_sequences_trained_on_the_answers_only(tmp_path):
    tok = tiny_tokenizer()
    (sample,) = pairs_of([{"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}], tmp_path)
    assert len(sample.seq_lens) == 2
    assert answers(sample, tok) == [" 4</s>", " 5</s>"]  # the answer and the eos after it
    chosen, rejected = sample.input_ids[:sample.seq_lens[0]], sample.input_ids[sample.seq_lens[0]:]
    assert tok.decode(chosen.tolist()) == "<s>Q: 2+2?\nA: 4</s>" and tok.decode(rejected.tolist()) == "<s>Q: 2+2?\nA: 5</s>"
    assert sample.chosen_tokens == len(tok(" 4", add_special_tokens=False)["input_ids"]) + 1


def test_the_conversational_forms_explicit_and_implicit_prompt_train_on_the_answer_turns(tmp_path):
    tok = tiny_tokenizer()
    user = [{"role": "user", "content": "Sky?"}]
    explicit = {"prompt": user, "chosen": [{"role": "assistant", "content": "blue"}],
                "rejected": [{"role": "assistant", "content": "green"}]}
    implicit = {"chosen": user + explicit["chosen"], "rejected": user + explicit["rejected"]}
    one, two = pairs_of([explicit, implicit], tmp_path)
    assert torch.equal(one.input_ids, two.input_ids) and torch.equal(one.labels, two.labels)
    assert answers(one, tok) == ["blue</s>\n", "green</s>\n"]  # the template's turn end is the answer's
    full = tok.apply_chat_template(implicit["chosen"], tokenize=False)
    assert tok.decode(one.input_ids[:one.seq_lens[0]].tolist()) == full


@pytest.mark.parametrize("row, says", [
    ({"prompt": "p", "chosen": "a"}, "line 1: missing 'rejected'"),
    ({"chosen": "a", "rejected": "b"}, "line 1: 'chosen' and 'rejected' are text, so the record needs its 'prompt'"),
    ({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]},
     "line 1: 'chosen' and 'rejected' should both be text or both message lists"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "line 1: 'prompt' should be text, not a int"),
    ({"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]},
     "line 1: no 'prompt', and 'chosen' and 'rejected' begin with different messages"),
    ({"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "user", "content": "y"}],
      "rejected": [{"role": "assistant", "content": "z"}]}, "line 1: no assistant message to train on"),
    ({"prompt": "p", "chosen": [{"content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "line 1: chosen[0] is missing 'role' or 'content'"),
])
def test_a_bad_preference_record_is_named_by_its_line(tmp_path, row, says):
    with pytest.raises(UserError) as caught:
        pairs_of([row], tmp_path)
    assert says in str(caught.value)


def test_the_launcher_names_the_preference_format_for_pairs(tmp_path):
    from ftcore import formats

    path = tmp_path / "pairs.jsonl"
    path.write_text(PREFS.read_text().splitlines()[0] + "\n")
    assert formats.mismatch(path, "preference") is None
    assert "data.format=preference fits them" in formats.mismatch(path, "jsonl")


# --- the schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, says", [
    ({"objective": {"name": "dpo"}}, "objective.name=dpo trains on preference pairs: it needs data.format=preference"),
    ({"data": {"path": str(PREFS), "format": "preference"}}, "data.format=preference holds preference pairs"),
    ({"objective": {"name": "dpo", "loss_type": "hinge", "label_smoothing": 0.1},
      "data": {"path": str(PREFS), "format": "preference"}}, "objective.label_smoothing smooths DPO's sigmoid loss"),
])
def test_the_schema_refuses_an_objective_and_data_that_do_not_go_together(changes, says):
    with pytest.raises(UserError) as caught:
        from ftcore.schema import validate as schema_validate

        schema_validate(tiny_job(changes))
    assert any(says in line for line in caught.value.problems), caught.value.problems


def test_objective_is_a_switch_word_on_the_command_line():
    job = config.resolve("tiny_dpo", ["objective=orpo", "objective.beta=0.2"]).job
    assert (job.objective.name, job.objective.beta) == ("orpo", 0.2)
    assert config.resolve("tiny_dpo", ["objective=dpo"]).job.objective.beta == 0.1  # kept: the same word
    with pytest.raises(UserError, match="objective='kto': choose one of sft, dpo, orpo"):
        config.resolve("tiny_dpo", ["objective=kto"])


# --- the losses -----------------------------------------------------------------------------------


def test_dpo_losses_are_the_papers(tmp_path):
    from ftcore.schema import ObjectiveConfig
    from trainer.objectives import dpo_losses

    chosen, rejected = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    ref_c, ref_r = torch.tensor([-11.0, -4.5]), torch.tensor([-11.0, -3.5])
    delta = (chosen - ref_c) - (rejected - ref_r)
    sigmoid, *_ = dpo_losses(chosen, rejected, ref_c, ref_r, ObjectiveConfig(name="dpo", beta=0.5))
    torch.testing.assert_close(sigmoid, -torch.nn.functional.logsigmoid(0.5 * delta))
    smoothed, *_ = dpo_losses(chosen, rejected, ref_c, ref_r, ObjectiveConfig(name="dpo", beta=0.5, label_smoothing=0.2))
    torch.testing.assert_close(smoothed, 0.8 * -torch.nn.functional.logsigmoid(0.5 * delta)
                               + 0.2 * -torch.nn.functional.logsigmoid(-0.5 * delta))
    hinge, *_ = dpo_losses(chosen, rejected, ref_c, ref_r, ObjectiveConfig(name="dpo", beta=0.5, loss_type="hinge"))
    torch.testing.assert_close(hinge, torch.relu(1 - 0.5 * delta))
    tokens_c, tokens_r = torch.tensor([4, 2]), torch.tensor([5, 1])
    ipo, *_ = dpo_losses(chosen, rejected, ref_c, ref_r, ObjectiveConfig(name="dpo", beta=0.5, loss_type="ipo"),
                         tokens_c, tokens_r)
    torch.testing.assert_close(ipo, ((chosen - ref_c) / tokens_c - (rejected - ref_r) / tokens_r - 1 / (2 * 0.5)) ** 2)
    same, rewards_c, rewards_r = dpo_losses(chosen, rejected, chosen, rejected, ObjectiveConfig(name="dpo"))
    assert same.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-7) and rewards_c.tolist() == rewards_r.tolist() == [0.0, 0.0]


def test_log1mexp_is_accurate_at_both_ends():
    from trainer.objectives import log1mexp

    x = torch.tensor([-1e-6, -0.5, -0.7, -3.0, -40.0], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(-torch.expm1(x)))


def test_sequence_logps_are_the_same_padded_and_padding_free():
    from trainer.collate import collate
    from trainer.loss import CausalLMLoss
    from trainer_helpers import tiny_llama

    tok = tiny_tokenizer()
    rows = [json.loads(line) for line in PREFS.read_text().splitlines()[:3]]
    samples = pairs_of(rows, None)
    module = CausalLMLoss(tiny_llama(seed=1))
    free = module(**collate(samples, tok.pad_token_id, "sdpa", padding_free=True, sequences=True))
    padded = module(**collate(samples, tok.pad_token_id, "sdpa", padding_free=False, sequences=True))
    torch.testing.assert_close(free, padded, rtol=1e-5, atol=1e-5)
    # Each sequence alone, through the model's own forward: the sum of its answer tokens' log-probs.
    alone = []
    for sample in samples:
        start = 0
        for n in sample.seq_lens:
            ids, labels = sample.input_ids[start:start + n].long()[None], sample.labels[start:start + n].long()[None]
            logits = module.lm(input_ids=ids).logits[0, :-1].log_softmax(-1)
            keep = labels[0, 1:] != -100
            alone.append(logits[keep].gather(1, labels[0, 1:][keep][:, None]).sum())
            start += n
    torch.testing.assert_close(free, torch.stack(alone), rtol=1e-5, atol=1e-5)


# --- training -------------------------------------------------------------------------------------


def _tiny_dpo(*overrides: str, steps: int = 20) -> dict:
    from ftcore.schema import job_to_dict

    job = config.resolve("tiny_dpo", [f"trainer.max_steps={steps}", "trainer.val_every_steps=null",
                                      "checkpoint.every_steps=null", *overrides]).job
    return job_to_dict(job)


@pytest.mark.parametrize("peft", ["lora", "none"])
def test_tiny_dpo_trains_from_ln2_to_a_positive_margin(tmp_path, peft):
    raw = _tiny_dpo(f"peft={peft}")
    write_config(tmp_path, raw)  # (what `ft eval` reads the job from)
    assert train(tmp_path, raw) == 0
    steps = [r for r in read_metrics(tmp_path) if records.LOSS in r]
    assert steps[0][records.LOSS] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference before step 1
    assert steps[0][records.REWARDS_MARGINS] == 0.0
    first, last = steps[:4], steps[-4:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, records.LOSS) < mean(first, records.LOSS) - 0.02
    assert mean(last, records.REWARDS_MARGINS) > 0.05 and mean(last, records.REWARDS_ACCURACIES) > 0.6
    val = [r for r in read_metrics(tmp_path) if records.VAL_LOSS in r][-1]
    assert set(records.VAL_PREFIX + key for key in records.PREFERENCE) <= set(val)
    if peft == "lora":  # `ft eval` on the result: the held-out pairs, scored without a reference
        from fttools.evaluate import evaluate

        from ftcore import layout

        result = evaluate(layout.Checkpoint.at(layout.newest_complete(tmp_path)), None, answers=False)
        assert result["examples"] == 40 and result["format"] == "preference"
        assert result[records.LOGPS_CHOSEN] < 0 and 0 <= result["preference_accuracy"] <= 100


def test_orpo_trains_without_a_reference(tmp_path):
    raw = _tiny_dpo("objective=orpo", "peft=none", "optim.lr=3e-3")
    assert train(tmp_path, raw) == 0
    log = (tmp_path / "metrics.jsonl").read_text()
    steps = [r for r in read_metrics(tmp_path) if records.LOSS in r]
    assert {records.NLL_LOSS, records.LOG_ODDS_RATIO, records.LOG_ODDS_CHOSEN, *records.PREFERENCE} <= set(steps[0])
    # loss = nll - beta × mean log sigmoid(log odds ratio), at every step
    for r in steps:
        assert r[records.LOSS] == pytest.approx(r[records.NLL_LOSS] - 0.1 * r[records.LOG_ODDS_RATIO], rel=1e-5)
    assert steps[-1][records.NLL_LOSS] < steps[0][records.NLL_LOSS] and "DPO reference" not in log
    assert steps[-1][records.REWARDS_MARGINS] > steps[0][records.REWARDS_MARGINS]
