"""Preemption on the real local SLURM cluster, inside the stock image through the isolating
container stand-in: a job signalled twice (USR1, as SLURM sends before a time limit)
checkpoints, requeues itself, resumes, and ends with the same weights, bit for bit, as the
same job run without interruption. The signal reaches the trainer through srun and the
container runtime; job folder, model and data live outside the default binds."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from slurm_cluster import job_fields, wait_for_job, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.train]

RUN = ["trainer.max_steps=120", "trainer.val_every_steps=null", "checkpoint.every_steps=1000",
       "slurm.time=00:10:00", "data.max_seq_length=64"]


def submit(ft, site) -> tuple[str, Path]:
    result = ft("submit", "--factory", "tiny", *RUN, *site.overrides(), "--yes", env=site.env)
    assert result.returncode == 0, result.stderr
    job_id = next(l for l in result.stdout.splitlines() if l.startswith("Submitted batch job")).split()[-1]
    folder = Path(next(l for l in result.stdout.splitlines() if l.startswith("Job folder: ")).split(": ", 1)[1])
    return job_id, folder


def last_step(folder: Path) -> int:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(l).get("step", 0) for l in lines if l.strip().endswith("}")]
    return max(steps, default=0)


def log_tail(folder: Path) -> str:
    """The end of the job's SLURM logs and its events, for a failure's message."""
    parts = [f"{path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:])
             for path in sorted((folder / "logs").glob("*.out"))]
    events_file = folder / "events.jsonl"
    return "\n".join([*parts, events_file.read_text() if events_file.exists() else "(no events)"])


def events(folder: Path) -> list[dict]:
    return [json.loads(l) for l in (folder / "events.jsonl").read_text().splitlines()]


def final_weights(folder: Path) -> dict:
    latest = (folder / "checkpoints" / "latest").read_text().strip()
    return load_file(folder / "checkpoints" / latest / "model.safetensors")


def preempt(job_id: str, folder: Path, after_step: int, starts: int) -> None:
    """Signal the batch shell once training passed `after_step`, then let the requeued job start."""
    wait_until(lambda: last_step(folder) >= after_step, 180,
               lambda: f"job {job_id} never reached step {after_step}:\n{log_tail(folder)}")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    wait_until(lambda: sum(e["event"] == "requeue" for e in events(folder)) == starts, 120,
               f"job {job_id} did not requeue itself:\n{(folder / 'events.jsonl').read_text()}")
    # A requeued job waits ~120 s (BeginTime) before it may start again; release it sooner,
    # but only once the old run's step is gone from the node: a job started while its previous
    # credential is still being revoked is killed ("Job credential revoked").
    wait_until(lambda: job_fields(job_id).get("JobState") == "PENDING", 60, "requeued job is not pending")
    time.sleep(15)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def test_preempted_twice_ends_bit_identical_to_uninterrupted(slurm_cluster, ft, container_site):
    reference_id, reference = submit(ft, container_site)
    state, _ = wait_for_job(reference_id, timeout=300)
    assert state == "COMPLETED", (reference / "logs").iterdir().__next__().read_text()

    job_id, folder = submit(ft, container_site)
    preempt(job_id, folder, after_step=20, starts=1)
    preempt(job_id, folder, after_step=60, starts=2)
    state, fields = wait_for_job(job_id, timeout=300)
    log = "\n".join(p.read_text() for p in (folder / "logs").glob("*.out"))
    assert state == "COMPLETED", log
    assert fields.get("Restarts") == "2"
    kinds = [e["event"] for e in events(folder)]
    assert kinds == ["start", "signal", "exit", "requeue"] * 2 + ["start", "exit"], kinds
    assert [e.get("code") for e in events(folder) if e["event"] == "exit"] == [75, 75, 0]
    assert "checkpointed after a preemption signal" in log
    # The cluster's KillWait (scripts/slurm-up.sh sets 10 s), read at submit, reaches the trainer.
    assert "export FT_KILL_WAIT_S=10\n" in (folder / "job.sbatch").read_text()

    expected, got = final_weights(reference), final_weights(folder)
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] == got[name]).all(), name  # bit for bit

    # The losses of every step match too: the resumed runs saw the same batches.
    def losses(run: Path) -> dict[int, float]:
        records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    assert losses(folder) == losses(reference)
    status = ft("status", job_id)
    assert "COMPLETED" in status.stdout and "3 start(s)" in status.stdout
    runs = [c for c in container_site.calls() if c["command"][-1] == str(folder / "config.yaml")]
    assert len(runs) == 3 and all(c["command"][:3] == ["python", "-m", "trainer"] for c in runs)
