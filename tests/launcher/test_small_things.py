"""What a user sees in passing: words that say what they mean, no time left on a dead job,
the GPU type kept, an old id answered as itself, no library chatter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher import jobdir


def test_no_runtime_on_path_is_said_once(ft, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    result = ft("image", "check", str(tmp_path), env={"PATH": str(bare)})
    assert result.returncode == 2
    assert "neither apptainer nor singularity is on PATH here" in result.stderr
    assert "is not on PATH" not in result.stderr.replace("is on PATH here", "")


def test_a_dead_job_has_no_time_left(ft, isolated_home):
    folder = isolated_home / "jobs" / "20260101-000000-tiny-aaaaaa"
    (folder / "logs").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: tiny\ntrainer:\n  max_steps: 40\n")
    jobdir.write_record(folder, executor="local", job_id=None, factory="tiny")
    (folder / "events.jsonl").write_text(json.dumps({"event": "start"}) + "\n"
                                         + json.dumps({"event": "exit", "code": 1}) + "\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 12, "total_steps": 40, "elapsed_s": 30,
                                                      "remaining_s": 70}) + "\n")
    shown = ft("status", str(folder))
    assert "FAILED (exit 1)" in shown.stdout
    assert "12/40 (30%), 0:30 elapsed" in shown.stdout and "left" not in shown.stdout


def test_a_typed_gpu_count_keeps_its_type(ft):
    script = ft("submit", "--factory", "llama31_8b", "trainer.devices=a100:2", "--dry-run").stdout
    assert "#SBATCH --gpus-per-node=a100:2" in script and "#SBATCH --ntasks-per-node=2" in script
    assert "--gpus-per-node=4" in ft("submit", "--factory", "llama31_8b", "trainer.devices=gpu:h100:4",
                                     "trainer.gpu_type=null", "--dry-run").stdout.replace("h100:", "")
    clash = ft("show", "--factory", "llama31_8b", "trainer.devices=a100:2", "trainer.gpu_type=h100")
    assert clash.returncode == 2 and "two GPU types" in clash.stderr


def test_print_srun_says_cpu_for_a_cpu_job(ft):
    result = ft("submit", "--factory", "tiny", "--dry-run", "--print-srun")
    assert result.returncode == 0, result.stderr
    assert "CPU processes, no GPUs" in result.stderr and "per GPU" not in result.stderr
    gpu = ft("submit", "--factory", "llama31_8b", "--dry-run", "--print-srun")
    assert "(1 task(s), one per GPU)" in gpu.stderr


def test_an_earlier_id_of_a_resubmitted_folder_answers_as_itself(ft, isolated_home):
    folder = isolated_home / "jobs" / "20260101-000000-tiny-aaaaaa"
    (folder / "logs").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: tiny\n")
    jobdir.write_record(folder, executor="slurm", job_id="15", factory="tiny",
                        history=[{"job_id": "12", "time": "2026-01-01T00:00:00Z"}])
    bare = isolated_home / "bin"  # no squeue here: the folder answers
    bare.mkdir()
    shown = ft("status", "12", env={"PATH": str(bare)})
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[:3]
    assert first[0].startswith("job        12 (slurm), an earlier submission")
    assert first[1] == "state      ENDED (resubmitted as 15)"
    assert "job        15 (slurm)" in shown.stdout


def test_torchao_import_chatter_is_filtered():
    """What `ft eval` (fttools.require_stack) and the trainer do before importing peft: the
    loggers torchao and torch speak through at import are the ones quieted, and nothing is said."""
    import subprocess
    import sys

    probe = ("from trainer import IMPORT_NOISE, quiet_import_noise; quiet_import_noise()\n"
             "import peft, torchao, torch.utils._pytree as pytree\n"
             "assert torchao.logger.name in IMPORT_NOISE and pytree.log.name in IMPORT_NOISE\n")
    quiet = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).parents[2])
    if "No module named" in quiet.stderr:
        pytest.skip(f"peft or torchao is not installed here: {quiet.stderr[-200:]}")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr

def test_a_sweep_shows_its_tasks_before_asking_and_in_status(ft, isolated_home):
    from launcher import submit

    p = submit.prepare("tiny", [], sweeps=["optim.lr=1e-5,3e-5", "peft.dim=4,8"], dry_run=True)
    rows = dict(submit.summary(p))
    assert rows["sweep"].startswith("4 tasks in one SLURM array")
    assert [rows[f"  task {i}"] for i in range(4)] == [
        "peft.dim=4 optim.lr=1e-05", "peft.dim=8 optim.lr=1e-05", "peft.dim=4 optim.lr=3e-05", "peft.dim=8 optim.lr=3e-05"]
    folder = submit.write(p)
    jobdir.write_record(folder, executor="slurm", job_id="77", factory="tiny")
    bare = isolated_home / "bin"  # no squeue: each task's folder answers
    bare.mkdir()
    shown = ft("status", "77", env={"PATH": str(bare)})
    assert shown.returncode == 0, shown.stderr
    assert "  task 3: PENDING | - | checkpoint - | peft.dim=8 optim.lr=3e-05  (ft status 77_3)" in shown.stdout
    dry = ft("submit", "--factory", "tiny", "--sweep", "optim.lr=1e-5,3e-5", "--dry-run")
    assert "sweep: 2 tasks in one SLURM array" in dry.stderr and "task 1: optim.lr=3e-05" in dry.stderr


def test_a_job_without_container_is_checked_against_the_python_it_will_run_with(ft, tmp_path):
    import subprocess
    import sys

    bare = tmp_path / "bare"  # a Python with nothing installed, as a light login node's
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    real = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", f"container.python={python}")
    assert real.returncode == 2, real.stdout + real.stderr
    assert "torch is missing" in real.stderr and f"runs the job with {python}" in real.stderr
    dry = ft("submit", "--factory", "tiny", "--dry-run", f"container.python={python}")
    assert dry.returncode == 0 and "warning: torch is missing" in dry.stderr
    assert ft("submit", "--factory", "tiny", "--dry-run").stderr.count("warning") == 0  # this Python has it all


def test_best_names_a_kept_checkpoint_and_says_when_the_lowest_is_gone(ft, isolated_home):
    folder = isolated_home / "jobs" / "20260101-000000-tiny-bbbbbb"
    (folder / "logs").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: tiny\n")
    jobdir.write_record(folder, executor="local", job_id=None, factory="tiny")
    for step in (20, 30):  # step 10's checkpoint was pruned (keep_last)
        state = folder / "checkpoints" / f"step-{step:06d}" / "ft_state"
        (state / "dcp").mkdir(parents=True)
        (state / "dcp" / "index.json").write_text("x")
        (state / "trainer_state.json").write_text(json.dumps({"step": step}))
        (state / "COMPLETE").write_text("")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val_loss": v}) + "\n"
                                                  for s, v in ((10, 0.5), (20, 0.7), (30, 0.9), (25, 0.1))))
    best = ft("best", str(folder))
    assert best.returncode == 0, best.stderr
    assert best.stdout.strip() == str(folder / "checkpoints" / "step-000020")
    assert "step 20: val_loss 0.7000" in best.stderr and "0.1000 at step 25, has no checkpoint kept" in best.stderr
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    none = ft("best", str(folder))
    assert none.returncode == 2 and "val_every_steps" in none.stderr


def test_pending_reads_with_slurms_reason_and_estimated_start():
    from launcher import slurm

    assert slurm.describe_state({"JobState": "PENDING", "Reason": "Resources", "StartTime": "2026-12-02T19:00:00"}) \
        == "PENDING (Resources; estimated start 2026-12-02T19:00:00)"
    assert slurm.describe_state({"JobState": "PENDING", "Reason": "Dependency", "StartTime": "Unknown"}) \
        == "PENDING (Dependency)"
    assert slurm.describe_state({"JobState": "RUNNING", "Reason": "None"}) == "RUNNING"


def test_a_cancelled_job_slurm_forgot_reads_cancelled(ft, isolated_home, tmp_path):
    folder = isolated_home / "jobs" / "20260101-000000-tiny-cccccc"
    (folder / "logs").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: tiny\n")
    jobdir.write_record(folder, executor="slurm", job_id="41", factory="tiny")
    fake = tmp_path / "fake-bin"  # a controller that knows the job as pending, then forgets it
    fake.mkdir()
    (fake / "scancel").write_text("#!/bin/bash\nexit 0\n")
    (fake / "scontrol").write_text("#!/bin/bash\necho 'JobId=41 JobName=ft-tiny JobState=PENDING Reason=Priority "
                                   "StartTime=Unknown'\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    assert "state      PENDING (Priority)" in ft("status", "41", env=env).stdout
    assert ft("cancel", "41", env=env).returncode == 0
    (fake / "scontrol").write_text("#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    shown = ft("status", "41", env=env)
    assert "state      CANCELLED" in shown.stdout, shown.stdout + shown.stderr
