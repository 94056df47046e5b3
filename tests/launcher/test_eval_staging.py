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


@pytest.fixture(scope="module")
def slurm_job(tmp_path_factory):
    """A tiny trained job whose record says it ran on SLURM: `ft eval --tasks` defaults to a job."""
    import shutil

    from post_helpers import one_thread, train_job

    if shutil.which("sbatch") is None:
        pytest.skip("no SLURM client here")
    home = tmp_path_factory.mktemp("home")
    with one_thread():
        folder = train_job(home, "slurmjob")
    (folder / "submission.json").write_text(json.dumps({"executor": "slurm", "job_id": "4242", "factory": "test",
                                                         "folder": str(folder), "history": []}))
    return folder


@pytest.mark.train
def test_an_unstaged_task_is_refused_at_submit_with_the_staging_command(hub, slurm_job, tmp_path, isolated_home):
    """`ft eval JOB --tasks` for a job that ran on SLURM: refused before any folder or sbatch."""
    from post_helpers import run_ft

    task = task_file(tmp_path / "tasks")
    code, _, stderr = run_ft("eval", str(slurm_job), "--tasks", str(task), "--yes")  # SLURM: the job's default
    assert code == 2, stderr
    assert "cannot be built offline" in stderr and f"ft stage --tasks {task}" in stderr
    assert not (isolated_home / "jobs").exists()  # no evaluation job folder
    assert [p.name for p in slurm_job.parent.iterdir()] == ["slurmjob"]


@pytest.mark.train
def test_the_evaluation_jobs_script_under_dry_run(slurm_job, tmp_path, isolated_home):
    """What the evaluation job runs, printed and nothing written: one task, the model tools' command,
    datasets offline; a script bash and shellcheck accept."""
    import subprocess

    from post_helpers import run_ft

    task = task_file(tmp_path / "tasks")
    code, script, stderr = run_ft("eval", str(slurm_job), "--tasks", f"{task},hellaswag", "--limit", "3",
                                  "--time", "00:20:00", "--dry-run")
    assert code == 0, stderr
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --time=00:20:00" in script
    assert "#SBATCH --job-name=ft-eval-test" in script and "export HF_DATASETS_OFFLINE=1" in script
    checkpoint = slurm_job / "checkpoints" / "step-000002"
    assert f"-m fttools.lmeval {checkpoint} --tasks hellaswag,{task} --out {slurm_job}/eval/" in script
    assert "--limit 3" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    checked = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", "-"], input=script, text=True,
                             capture_output=True)
    assert checked.returncode == 0, checked.stdout
    assert not (isolated_home / "jobs").exists() and not (slurm_job / "eval").exists()
    code, _, stderr = run_ft("eval", str(slurm_job), "--tasks", "hellaswag", "--executor", "local", "--dry-run")
    assert code == 2 and "goes with --executor slurm" in stderr
