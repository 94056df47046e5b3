"""Nothing lost, nothing half-written: ft is killed (SIGKILL) at each write it makes, or the
write fails (a full disk), and the job folder must hold the old or the new of every file,
never an empty or partial one (tests/fault_injection.py says how)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fake_scheduler import fake_scheduler
from fault_injection import FAIL, KILL, every_write, finish_or_show_threads, in_child

from ftcore import layout, schema
from launcher import jobdir, jobs, submit


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != jobdir.LOCK and not p.name.startswith(".")}


@pytest.mark.parametrize("mode", [KILL, FAIL])
def test_a_new_job_folder_is_whole_or_absent(mode, isolated_home):
    prepared = submit.prepare("tiny", [], executor="slurm", dry_run=True)
    root = isolated_home / "jobs"
    done = submit.write(prepared)
    expected = files_of(done)
    shutil.rmtree(done)

    def check(at: int, outcome: str) -> None:
        for folder in [p for p in root.iterdir() if not p.name.startswith(".")]:
            got = files_of(folder)
            # The script names its own folder: compare it with that name put back.
            assert got[layout.CONFIG] == expected[layout.CONFIG] and got[layout.COMMAND]
            assert got[layout.SCRIPT] == expected[layout.SCRIPT].replace(done.name.encode(), folder.name.encode())
            assert (folder / layout.LOGS).is_dir()
            schema.load_job(folder / layout.CONFIG)
        if outcome == "failed":  # a failure cleans up after itself; only a kill leaves a hidden folder
            assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-")] == []

    def reset() -> None:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)

    writes = every_write(lambda: submit.write(prepared), check, mode, reset)
    assert writes >= 5  # mkdtemp, logs/, three files, chmod/rename


@pytest.mark.parametrize("mode", [KILL, FAIL])
def test_a_submit_records_the_job_or_nothing(mode, tmp_path, monkeypatch):
    fake_scheduler(tmp_path, monkeypatch, "echo 4242\n")
    folder = submit.write(submit.prepare("tiny", [], executor="slurm", dry_run=True))
    before = files_of(folder)

    def check(at: int, outcome: str) -> None:
        now = files_of(folder)
        assert {k: v for k, v in now.items() if k != layout.RECORD} == before
        if layout.RECORD in now:
            assert json.loads(now[layout.RECORD])["job_id"] == "4242"
        assert outcome != "done" or layout.RECORD in now

    def reset() -> None:
        (folder / layout.RECORD).unlink(missing_ok=True)

    every_write(lambda: submit.submit(folder, "tiny"), check, mode, reset)


@pytest.mark.parametrize("answer", ["echo 4243\n", "echo 'sbatch: error: Batch job submission failed' >&2; exit 1\n"],
                         ids=["accepted", "refused"])
@pytest.mark.parametrize("mode", [KILL, FAIL])
def test_a_resubmit_leaves_each_file_old_or_new(mode, answer, tmp_path, monkeypatch):
    fake_scheduler(tmp_path, monkeypatch, "echo 4242\n")
    folder = submit.write(submit.prepare("tiny", [], executor="slurm", dry_run=True))
    submit.submit(folder, "tiny")
    (folder / layout.EVENTS).write_text(json.dumps({"event": "exit", "code": 1}) + "\n")
    calls = tmp_path / "sbatch-calls"
    old = files_of(folder)

    def work() -> None:
        submit.resubmit(jobs.load(folder), ["trainer.max_steps=7"])

    def reset() -> None:
        calls.unlink(missing_ok=True)
        for path in folder.iterdir():
            if path.is_file():
                path.unlink()
        for name, data in old.items():
            (folder / name).write_bytes(data)

    # The new files, as an accepted resubmit leaves them (a refused one writes them too, then
    # puts the old back).
    fake_scheduler(tmp_path, monkeypatch, "echo 4243\n")
    assert in_child(work, 10**6, KILL) == "done"
    new = files_of(folder)
    assert new[layout.CONFIG] != old[layout.CONFIG] and json.loads(new[layout.RECORD])["job_id"] == "4243"
    fake_scheduler(tmp_path, monkeypatch, f"echo called >> {calls}\n{answer}")
    reset()
    assert in_child(work, 10**6, KILL) == "done"
    if "exit 1" in answer:
        assert files_of(folder) == old, "a refused resubmit leaves the folder exactly as it was"

    def check(at: int, outcome: str) -> None:
        now = files_of(folder)
        assert set(now) == set(old), (at, set(now) ^ set(old))
        for name, data in now.items():
            if name == layout.RECORD:
                assert json.loads(data)["job_id"] in ("4242", "4243")
            else:
                assert data in (old[name], new[name]), f"{name} is neither old nor new after write {at} ({outcome})"
        if outcome == "failed" and not calls.exists():
            assert now == old, f"a resubmit that failed before sbatch ran (write {at}) must leave the folder as it was"

    every_write(work, check, mode, reset)


def test_stale_temporary_folders_are_removed_by_age_and_owner(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = jobdir._host()
    old = time.time() - 2 * jobdir.STALE_AFTER_S
    ancient = time.time() - 2 * jobdir.FOREIGN_STALE_AFTER_S
    cases = {
        f".tmp-{host}-{dead.pid}-x-aaaa": (old, True),  # its process is gone
        f".tmp-{host}-{dead.pid}-x-bbbb": (time.time(), False),  # too new to judge
        f".tmp-{host}-{os.getpid()}-x-cccc": (old, False),  # its process is alive (this one)
        ".tmp-otherhost-1-x-dddd": (old, False),  # another machine's: wait a day
        ".tmp-otherhost-1-x-eeee": (ancient, True),
        ".tmp-20260101-000000-tiny-ab12cd-zz": (ancient, True),  # the old naming
        "20260101-000000-tiny-ab12cd": (ancient, False),  # a job folder: never
    }
    for name, (mtime, _) in cases.items():
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (mtime, mtime))
    removed = {p.name for p in jobdir.remove_stale(tmp_path)}
    assert removed == {name for name, (_, stale) in cases.items() if stale}
    assert all((tmp_path / name).exists() != stale for name, (_, stale) in cases.items())


def test_a_killed_build_is_cleaned_up_by_the_next(isolated_home, monkeypatch):
    prepared = submit.prepare("tiny", [], executor="slurm", dry_run=True)
    root = isolated_home / "jobs"
    root.mkdir(parents=True)
    assert in_child(lambda: submit.write(prepared), 3, KILL) == "killed"
    (leftover,) = [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(jobdir, "STALE_AFTER_S", 0)
    submit.write(prepared)
    assert not leftover.exists()


def _submit_in_background(tmp_path: Path) -> subprocess.Popen:
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), PYTHONFAULTHANDLER="1")
    return subprocess.Popen([sys.executable, "-m", "launcher", "submit", "--factory", "tiny", "--yes",
                             "--skip-image-check", "container.runtime=none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


def _wait_for_sbatch(calls: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not calls.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def test_ft_clean_during_a_slow_submit_keeps_the_new_folder(ft, tmp_path, monkeypatch, isolated_home):
    calls = tmp_path / "sbatch-called"
    fake_scheduler(tmp_path, monkeypatch, f"touch {calls}\nsleep 3\necho 4242\n")
    proc = _submit_in_background(tmp_path)
    _wait_for_sbatch(calls, proc)
    cleaned = ft("clean", "--dry-runs", "--yes")
    assert cleaned.returncode == 0 and "no dry runs to remove" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    (folder,) = [p for p in (isolated_home / "jobs").iterdir() if not p.name.startswith(".")]
    assert json.loads((folder / layout.RECORD).read_text())["job_id"] == "4242"


def test_ctrl_c_while_sbatch_answers_keeps_a_folder_that_is_not_a_dry_run(ft, tmp_path, monkeypatch, isolated_home):
    import signal

    calls = tmp_path / "sbatch-called"
    fake_scheduler(tmp_path, monkeypatch, f"touch {calls}\nsleep 60\necho 4242\n")
    proc = _submit_in_background(tmp_path)
    _wait_for_sbatch(calls, proc)
    proc.send_signal(signal.SIGINT)
    out, err = finish_or_show_threads(proc, 60)
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "interrupted while sbatch was answering: the job may have been submitted" in err
    (folder,) = [p for p in (isolated_home / "jobs").iterdir() if not p.name.startswith(".")]
    assert ft("clean", "--dry-runs", "--yes").stdout.strip() == "no dry runs to remove"
    listed = ft("jobs").stdout
    assert folder.name in listed and "interrupted" in listed.replace("\n", " ") and "dry run" not in listed
