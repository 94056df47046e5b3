"""`ft eval`: SQuAD's normalisation and scores on known cases; the loss training reported."""

from __future__ import annotations

import json
import shutil

import pytest
from post_helpers import metrics, one_thread, run_ft, train_job, write_records

from ftcore import files, layout
from launcher import locate
from ftcore.errors import UserError
from fttools.squad_metrics import exact_match, f1, gold_answers, normalize_answer, score

# --- SQuAD v1.1's normalisation and scores (no torch) ------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   apple, a pear!  ", "apple pear"),
    ("Theory of the Atom.", "theory of atom"),  # articles go as words only: "Theory" keeps its "the"
    ("A", ""),
    ("U.S.A.", "usa"),
    ("it's 1,000 (approx.)", "its 1000 approx"),
    ("Oslo\n\tNorway", "oslo norway"),
    ("ANATHEMA", "anathema"),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_after_normalisation():
    assert exact_match("the Oslo.", "Oslo") == 1.0
    assert exact_match("Oslo, Norway", "Oslo") == 0.0


@pytest.mark.parametrize("prediction, gold, expected", [
    ("Oslo", "Oslo", 1.0),
    ("in Oslo", "Oslo", 2 * 0.5 * 1 / 1.5),                 # precision 1/2, recall 1
    ("Oslo Norway", "the city of Oslo", 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)),  # "city of oslo": 1 of 3
    ("Rome", "Oslo", 0.0),
    ("the", "Oslo", 0.0),                                  # normalises to nothing
    ("x x y", "x y y", 2 / 3),                             # a token is shared as often as both have it
    ("a b", "b b", 2 * 1 * 0.5 / 1.5),                     # "a" is an article: "b" vs "b b"
])
def test_f1_on_known_cases(prediction, gold, expected):
    assert f1(prediction, gold) == pytest.approx(expected)


def test_dataset_scores_take_the_best_gold_answer_and_are_percentages():
    result = score(["Denver Broncos", "Santa Clara", "nothing"],
                   [["Denver Broncos", "Broncos"], ["Levi's Stadium", "Santa Clara, California"], ["x"]])
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 * 1 * (2 / 3) / (1 + 2 / 3) + 0) / 3)
    with pytest.raises(ValueError):
        score(["a"], [])


def test_gold_answers_from_both_squad_layouts():
    assert gold_answers({"text": ["36", "thirty-six"], "answer_start": [1, 2]}) == ["36", "thirty-six"]
    assert gold_answers([{"text": "36", "answer_start": 1}]) == ["36"]
    assert gold_answers(None) == []


# --- a trained checkpoint ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    pytest.importorskip("torch")
    home = tmp_path_factory.mktemp("home")
    val = write_records(home / "val.jsonl", 6)
    # Validation on a file of its own, every record (limit_val_batches null): the figure to match.
    data = {"val_path": str(val)}
    with one_thread():  # for the whole module: its tests run these models too
        yield {"lora": train_job(home, "lora", data=data), "sft": train_job(home, "sft", peft=None, data=data), "val": val,
               # no val_path: 20 % of 40 training records held out (data.val_fraction)
               "held": train_job(home, "held", data={"path": str(write_records(home / "train.jsonl", 40)),
                                                     "val_fraction": 0.2})}


@pytest.mark.train
@pytest.mark.parametrize("kind", ["lora", "sft"])
def test_loss_reproduces_the_jobs_last_validation(jobs, kind):
    from fttools.evaluate import evaluate

    ckpt = locate.find_checkpoint(str(jobs[kind]))
    result = evaluate(ckpt, str(jobs["val"]), answers=False)
    last = [m for m in metrics(jobs[kind]) if "val_loss" in m][-1]
    assert result["format"] == "squad"  # from the job's config
    assert result["examples"] == 6 and result["answer_tokens"] == last["val_tokens"]
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-5)


@pytest.mark.train
def test_without_data_the_held_out_fraction_is_rescored_as_training_split_it(jobs):
    code, stdout, stderr = run_ft("eval", str(jobs["held"]), "--json", "--loss-only")
    assert code == 0, stderr
    result = json.loads(stdout)
    last = [m for m in metrics(jobs["held"]) if "val_loss" in m][-1]
    assert result["examples"] == 8 and result["answer_tokens"] == last["val_tokens"]
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert "held out in training" in result["data"]


@pytest.mark.train
def test_a_wrong_format_names_the_one_that_fits(jobs):
    code, _, stderr = run_ft("eval", str(jobs["sft"]), "--data", str(jobs["val"]), "--format", "alpaca")
    assert code == 2 and "do not fit --format alpaca" in stderr and "--format squad fits them" in stderr


@pytest.mark.train
def test_squad_scores_are_those_of_the_predictions_shown(jobs):
    from fttools.evaluate import evaluate

    result = evaluate(locate.find_checkpoint(str(jobs["lora"])), "ft:tiny_qa.jsonl", limit=5, max_new_tokens=6)
    assert result["records"] == 5 and len(result["samples"]) == 5
    again = score([s["prediction"] for s in result["samples"]], [s["answers"] for s in result["samples"]])
    assert (result["exact_match"], result["f1"]) == (again["exact_match"], again["f1"])
    assert result["samples"][0]["answers"] == ["36"]


@pytest.mark.train
def test_data_problems_are_user_errors(jobs, tmp_path):
    from fttools.evaluate import evaluate

    ckpt = locate.find_checkpoint(str(jobs["sft"]))
    with pytest.raises(UserError, match="do not fit --format alpaca.*--format squad fits them"):
        evaluate(ckpt, str(jobs["val"]), fmt="alpaca")
    with pytest.raises(UserError, match="does not exist"):
        evaluate(ckpt, str(tmp_path / "none.jsonl"))
    loose = tmp_path / "loose"  # a checkpoint copied out of its job: no config to take the format from
    shutil.copytree(ckpt.path, loose)
    with pytest.raises(UserError, match="pass --format"):
        evaluate(locate.find_checkpoint(str(loose)), str(jobs["val"]))


@pytest.mark.train
def test_cli_table_and_json(jobs):
    code, stdout, stderr = run_ft("eval", str(jobs["lora"]), "--data", str(jobs["val"]), "--limit", "3")
    assert code == 0, stderr
    assert "loss" in stdout and "exact match" in stdout and "F1" in stdout
    code, stdout, stderr = run_ft("eval", str(jobs["sft"]), "--data", str(jobs["val"]), "--json", "--max-new-tokens", "4")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert {"loss", "perplexity", "exact_match", "f1", "answer_tokens"} <= result.keys()
    code, stdout, stderr = run_ft("eval", str(jobs["sft"]), "--data", str(jobs["val"]), "--json", "--loss-only")
    assert code == 0, stderr
    assert "exact_match" not in json.loads(stdout)
