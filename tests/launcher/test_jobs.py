"""Finding jobs and reading their state from the folder alone (no scheduler needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import jobdir, jobindex, jobs
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


# --- at scale: `ft jobs -n N` and `ft status ID` read the folders they show, not every folder -----


def _counting_loads(monkeypatch) -> list[Path]:
    loaded: list[Path] = []
    real = jobs.load

    def load(folder):
        loaded.append(folder)
        return real(folder)

    monkeypatch.setattr(jobs, "load", load)
    return loaded


def _many(isolated_home, n: int = 40) -> Path:
    root = isolated_home / "jobs"
    for i in range(n):
        folder = make_job(root, f"20260101-{i:06d}-tiny-aaaaaa", str(5000 + i) if i % 4 else None,
                          executor="slurm" if i % 4 else "dry-run")
        os_time = 1_700_000_000 + i
        import os

        os.utime(folder / "config.yaml", (os_time, os_time))
    return root


def test_status_by_id_reads_one_folder_and_survives_a_lost_or_lying_index(isolated_home, monkeypatch):
    root = _many(isolated_home)
    loaded = _counting_loads(monkeypatch)
    assert jobs.find("5013").folder.name == "20260101-000013-tiny-aaaaaa"
    assert len(loaded) == 1
    index = jobindex.folder(root)
    import shutil

    shutil.rmtree(index)  # lost: the scan answers, and writes the index again
    loaded.clear()
    assert jobs.find("5013").folder.name == "20260101-000013-tiny-aaaaaa" and len(loaded) > 30
    loaded.clear()
    assert jobs.find("5013").folder.name == "20260101-000013-tiny-aaaaaa" and len(loaded) == 1
    for lie in ("20260101-000014-tiny-aaaaaa", "../../etc", "", "\x00garbage"):  # stale or damaged entries
        (index / "ids" / "5013").write_text(lie)
        assert jobs.find("5013").folder.name == "20260101-000013-tiny-aaaaaa"
    with pytest.raises(UserError, match="no job '777'"):
        jobs.find("777")


def test_an_earlier_id_of_a_resubmitted_folder_is_indexed_too(isolated_home, monkeypatch):
    root = isolated_home / "jobs"
    folder = make_job(root, "20260101-000000-tiny-aaaaaa", None, executor="slurm")
    jobdir.write_record(folder, executor="slurm", job_id="7002", factory="tiny",
                        history=[{"executor": "slurm", "job_id": "7001"}])
    loaded = _counting_loads(monkeypatch)
    view = jobs.find("7001")
    assert view.folder == folder and view.earlier == "7001" and len(loaded) == 1


def test_concurrent_records_lose_no_index_entry(isolated_home):
    """Each entry is a file of its own, written whole: many writers at once lose none."""
    import threading

    root = isolated_home / "jobs"
    folders = [make_job(root, f"f{i}", None, executor="slurm") for i in range(60)]
    threads = [threading.Thread(target=jobdir.write_record, args=(f,),
                                kwargs={"executor": "slurm", "job_id": str(9000 + i), "factory": "tiny"})
               for i, f in enumerate(folders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = jobindex.folder(root) / "ids"
    assert sorted(p.name for p in ids.iterdir()) == [str(9000 + i) for i in range(60)]
    assert not [p for p in ids.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert sorted(p.name for p in root.iterdir()) == sorted(f.name for f in folders)  # job folders only


@pytest.mark.parametrize("with_dry_runs", [False, True])
def test_newest_reads_about_n_folders_and_agrees_with_reading_all(with_dry_runs, isolated_home, monkeypatch):
    root = _many(isolated_home)
    everything = jobs.all_jobs()
    hidden = [] if with_dry_runs else jobs.dry_runs(everything)
    expected = [v.folder for v in everything if v not in hidden][:5]
    loaded = _counting_loads(monkeypatch)
    views, left_out = jobs.newest(5, with_dry_runs=with_dry_runs)
    assert [v.folder for v in views] == expected and left_out == len(hidden)
    # (a dry run among the ones shown is read to be sure it is one; past them, none is)
    assert len(loaded) <= 5 + sum(1 for v in hidden if v.created >= views[-1].created)
