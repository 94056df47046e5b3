"""Offline compute nodes and lm-eval: `ft stage --tasks` downloads a task's hub dataset into ft's
cache on the login node (from the hub stand-in, tests/hub_standin.py, with the real `datasets`
client), the evaluation job's offline build then finds it, and an unstaged task is refused at
submit with the command that stages it. Nothing here reaches the real hub."""

from __future__ import annotations

import json

import pytest
from hub_standin import StandInHub

from ftcore import evaltasks

pytest.importorskip("lm_eval")

ROWS = [{"question": f"Is {n} even?", "choices": ["yes", "no"], "label": n % 2} for n in range(6)]
CARD = b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test-*.jsonl\n---\n"


@pytest.fixture
def hub(monkeypatch):
    standin = StandInHub()
    standin.add("dataset", "ft-test/even", {"README.md": CARD, "data/test-00000-of-00001.jsonl":
                                            "".join(json.dumps(row) + "\n" for row in ROWS).encode()})
    monkeypatch.setenv("HF_ENDPOINT", standin.start())
    yield standin
    standin.stop()


def task_file(folder):
    """A task of the user's own whose data is a hub dataset (lm-eval reads it with `datasets`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "even.yaml"
    path.write_text("task: ft_even\ndataset_path: ft-test/even\ntest_split: test\noutput_type: multiple_choice\n"
                    "doc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\n"
                    "metric_list:\n  - metric: acc\n")
    return path


def test_stage_tasks_then_the_offline_build_finds_them(hub, ft, tmp_path, isolated_home):
    from launcher import taskdata

    task = task_file(tmp_path / "tasks")
    tasks = evaltasks.parse(str(task))
    cache = isolated_home / "hub"
    before = taskdata.unstaged(tasks, cache, cache / "datasets")
    assert len(before) == 2 and "cannot be built offline" in before[0]
    assert before[1].endswith(f"stage them on this login node first with: ft stage --tasks {task}")
    assert hub.requests == []  # the check is offline

    staged = ft("stage", "--tasks", str(task))
    assert staged.returncode == 0, staged.stderr
    assert f"staged lm-eval task {task} in {cache / 'datasets'}" in staged.stdout
    assert any(path for _, path in hub.requests if "/datasets/ft-test/even/resolve/" in path)
    asked = len(hub.requests)
    assert taskdata.unstaged(tasks, cache, cache / "datasets") == []
    assert len(hub.requests) == asked  # offline, from ft's cache only


def test_a_task_the_hub_lacks_is_a_one_line_error(hub, ft, tmp_path):
    path = tmp_path / "gone.yaml"
    path.write_text("task: ft_gone\ndataset_path: ft-test/gone\ntest_split: test\noutput_type: multiple_choice\n"
                    "doc_to_text: x\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: 0\n")
    result = ft("stage", "--tasks", f"{path},no_such_task_ft")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--tasks {path}: " in result.stderr and "--tasks no_such_task_ft: lm-eval has no task" in result.stderr


@pytest.mark.train
def test_an_unstaged_task_is_refused_at_submit_with_the_staging_command(hub, tmp_path, isolated_home):
    """`ft eval JOB --tasks` for a job that ran on SLURM: refused before any folder or sbatch."""
    import shutil

    from post_helpers import one_thread, run_ft, train_job

    if shutil.which("sbatch") is None:
        pytest.skip("no SLURM client here")
    with one_thread():
        folder = train_job(isolated_home, "slurmjob")
    (folder / "submission.json").write_text(json.dumps({"executor": "slurm", "job_id": "4242", "factory": "test",
                                                         "folder": str(folder), "history": []}))
    task = task_file(tmp_path / "tasks")
    code, _, stderr = run_ft("eval", str(folder), "--tasks", str(task), "--yes")  # SLURM: the job's default
    assert code == 2, stderr
    assert "cannot be built offline" in stderr and f"ft stage --tasks {task}" in stderr
    assert sorted(p.name for p in (isolated_home / "jobs").iterdir()) == ["slurmjob"]  # no evaluation job folder
