"""Finding jobs and reading their state from the folder alone (no scheduler needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import jobdir, jobs
from launcher.slurm import Slurm
from ftcore.errors import UserError


def make_job(root: Path, name: str, job_id: str | None, events: list[dict] | None = None,
             executor: str = "slurm", metrics: list[dict] | None = None) -> Path:
    folder = root / name
    (folder / "logs").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: tiny\ntrainer:\n  max_steps: 40\n")
    if job_id or executor != "slurm":
        jobdir.write_record(folder, executor=executor, job_id=job_id, factory="tiny")
    if events:
        (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return folder


@pytest.fixture
def root(tmp_path):
    return tmp_path / "jobs"


def test_find_by_id_folder_and_unique_prefix(root):
    a = make_job(root, "20260101-000000-tiny-aaaaaa", "1234")
    b = make_job(root, "20260101-000001-tiny-bbbbbb", "1299")
    assert jobs.find("1234", root).folder == a
    assert jobs.find(str(b), root).folder == b
    assert jobs.find("20260101-000001", root).folder == b
    with pytest.raises(UserError, match="'12' matches 2 jobs"):
        jobs.find("12", root)
    with pytest.raises(UserError, match="no job '777'"):
        jobs.find("777", root)


def test_state_from_the_folder_when_the_scheduler_forgot(root):
    start = {"event": "start", "job_id": "1"}
    done = make_job(root, "a", "1", [start, {"event": "exit", "code": 0}])
    failed = make_job(root, "b", "2", [start, {"event": "exit", "code": 3}])
    requeued = make_job(root, "c", "3", [start, {"event": "signal"}, {"event": "exit", "code": 75}, {"event": "requeue"}])
    running = make_job(root, "d", "4", [start], metrics=[{"step": 12, "loss": 1.0}])
    dry = make_job(root, "e", None, executor="dry-run")
    states = {v.folder: jobs.state(v, ask_scheduler=False) for v in jobs.all_jobs(root)}
    assert states == {done: "COMPLETED", failed: "FAILED (exit 3)", requeued: "REQUEUED",
                      running: "RUNNING", dry: "DRY-RUN"}
    assert jobs.load(running).progress() == "12/40"
    assert jobs.is_finished("FAILED (exit 3)") and not jobs.is_finished("RUNNING")


def test_summary_rows_are_json_ready(root):
    make_job(root, "20260101-000000-tiny-aaaaaa", "55", [{"event": "start"}])
    (row,) = jobs.summary_rows(jobs.all_jobs(root), ask_scheduler=False)
    assert row["id"] == "55" and row["folder"].endswith("aaaaaa") and row["state"] == "RUNNING"
    json.dumps(row)


def test_rank_selection_reads_srun_labels():
    lines = ["0: step 1 | loss 2", " 1: step 1 | loss 2", "srun: error", "10: x", "1: step 2"]
    assert Slurm().rank_lines(Path("slurm-1.out"), lines, 1) == ["step 1 | loss 2", "step 2"]
    assert Slurm().rank_lines(Path("slurm-1.out"), lines, None) == lines
