"""`ft eval --tasks`: lm-evaluation-harness on a trained checkpoint, held equal to lm-eval's own
CLI (`lm_eval --model hf`, a subprocess) on tasks of this file's own (data in local files, no
hub): a multiple-choice task and a generation task, every metric and every sample's answer.

One tiny LoRA job is trained once for the module (an adapter on its base: lm-eval's `peft=`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval_tasks import write_tasks
from post_helpers import one_thread, run_ft, train_job

from ftcore import contract, evaltasks
from ftcore.errors import UserError

pytest.importorskip("lm_eval")

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with one_thread():
        yield {"job": train_job(home, "lora"), "tasks": write_tasks(home / "tasks"), "home": home}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def lm_eval_cli(model_args: str, tasks: str, out: Path) -> dict:
    """lm-eval's own command line, as a user runs it; its results file and samples."""
    script = Path(sys.executable).with_name("lm_eval")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "lm_eval"]
    done = subprocess.run([*argv, "--model", "hf", "--model_args", model_args, "--tasks", tasks,
                           "--device", "cpu", "--output_path", str(out), "--log_samples"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    samples = {p.name.split("_", 1)[1].rsplit("_", 1)[0]: p for p in out.rglob("samples_*.jsonl")}
    return {"results": json.loads(results.read_text()), "samples": samples}


def answers(path: Path) -> list:
    """Each sample's document, the model's raw answers (log-likelihoods, generated text) and its scores."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted((r["doc_id"], json.dumps(r["doc"]), json.dumps(r["resps"]), json.dumps(r["filtered_resps"]),
                   json.dumps({k: r[k] for k in ("acc", "acc_norm", "exact_match") if k in r})) for r in rows)


@pytest.mark.train
@pytest.mark.timeout(900)
def test_ft_eval_tasks_equals_lm_eval_cli_on_the_same_checkpoint(trained, tmp_path):
    mc, gen = trained["tasks"]
    tasks = f"{mc},{gen}"
    code, stdout, stderr = run_ft("eval", str(trained["job"]), "--tasks", tasks, "--log-samples", "--json")
    assert code == 0, stderr[-3000:]
    out = Path(json.loads(stdout)["file"])
    assert out.parent == trained["job"] / "eval" and out.name.endswith("-lm-eval.json")
    ours = json.loads(out.read_text())

    # What a user types for the same checkpoint: the adapter on the base its config names.
    adapter = trained["job"] / "checkpoints" / "step-000002"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    theirs = lm_eval_cli(f"pretrained={base},peft={adapter},tokenizer={adapter}", tasks, tmp_path / "cli")

    assert set(ours["results"]) == {"ft_tiny_mc", "ft_tiny_gen"}
    assert ours["results"] == theirs["results"]["results"]  # every metric and stderr, exactly
    assert ours["n-samples"] == theirs["results"]["n-samples"]
    assert ours["config"]["model_args"] == theirs["results"]["config"]["model_args"]
    for task in ("ft_tiny_mc", "ft_tiny_gen"):
        ours_samples = out.parent / out.name.replace("-lm-eval.json", "-lm-eval-samples") / f"{task}.jsonl"
        assert answers(ours_samples) == answers(theirs["samples"][task])
    # The scores are the model's: four choices scored, three answers generated.
    assert len(answers(ours_samples)) == 3 and ours["n-samples"]["ft_tiny_mc"]["effective"] == 4

    # The latest scores, as a table and in the job's status.
    code, shown, stderr = run_ft("eval", str(trained["job"]), "--show")
    assert code == 0, stderr
    assert "ft_tiny_mc" in shown and "acc_norm" in shown and "exact_match" in shown and out.name in shown
    code, status, stderr = run_ft("status", str(trained["job"]))
    assert code == 0, stderr
    assert "lm-eval    ft_tiny_gen exact_match" in status and out.name in status


@pytest.mark.train
def test_an_unknown_task_and_a_missing_file_are_one_line_errors(trained, tmp_path):
    code, _, stderr = run_ft("eval", str(trained["job"]), "--tasks", "no_such_task_ft", "--executor", "local")
    assert code == 2 and "has no task, group or tag no_such_task_ft" in stderr and "Traceback" not in stderr
    code, _, stderr = run_ft("eval", str(trained["job"]), "--tasks", str(tmp_path / "none.yaml"))
    assert code == 2 and "no such task file" in stderr
    assert not (trained["job"] / "eval").exists() or all(
        p.name.endswith(("-lm-eval.json", "-lm-eval-samples")) for p in (trained["job"] / "eval").iterdir())


def test_without_lm_eval_the_error_names_the_extra(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails as if not installed
    code, _, stderr = run_ft("eval", str(trained["job"]), "--tasks", "hellaswag", "--executor", "local")
    # ft is on no index: the hint installs the extra from where this ft came from (ftcore.contract).
    assert code == 2 and contract.install_line("eval") in stderr and "Traceback" not in stderr


def test_options_of_the_other_eval_are_refused(tmp_path):
    code, _, stderr = run_ft("eval", str(tmp_path), "--tasks", "hellaswag", "--data", "x.jsonl", "--loss-only")
    assert code == 2 and "--data, --loss-only apply to ft's own eval (without --tasks)" in stderr
    code, _, stderr = run_ft("eval", str(tmp_path), "--num-fewshot", "5")
    assert code == 2 and "--num-fewshot applies to lm-eval's tasks: add --tasks" in stderr


def test_show_before_any_evaluation_says_how(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    code, _, stderr = run_ft("eval", str(folder), "--show")
    assert code == 2 and "no lm-eval results" in stderr and "--tasks" in stderr


def test_tasks_words(tmp_path):
    (tmp_path / "mine.yaml").write_text("task: mine\n")
    tasks = evaltasks.parse(f"hellaswag, mmlu,{tmp_path / 'mine.yaml'},hellaswag")
    assert tasks.names == ("hellaswag", "mmlu") and tasks.files == (tmp_path / "mine.yaml",)
    assert tasks.folders == (tmp_path,) and tasks.words() == f"hellaswag,mmlu,{tmp_path / 'mine.yaml'}"
    assert evaltasks.parse(str(tmp_path)).files == (tmp_path / "mine.yaml",)  # a folder: its task files
    with pytest.raises(UserError) as err:
        evaltasks.parse(f"{tmp_path / 'none.yaml'},bad name;rm,{tmp_path / 'x.txt'}")
    assert len(err.value.problems) == 3
    with pytest.raises(UserError, match="names no task"):
        evaltasks.parse(" , ")


def test_scores_read_lm_evals_results_json():
    results = {"results": {"arc": {"alias": "arc", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 4,
                                   "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"}}}
    assert evaltasks.scores(results) == [("arc", "acc", "0.5000", "0.1000"),
                                         ("arc", "exact_match (strict-match)", "0.2500", "-")]
