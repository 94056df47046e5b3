"""A local job's processes are known by pid, host and start time: `ft cancel` never signals a
process that now holds a recorded pid by chance, and `ft status` never reads a dead job as
running because its pid was reused, nor trusts pids recorded on another host.

Real processes stand in for the strangers: `sleep`s started here, whose pids are written into
a job's record the way pid reuse or a second login node sharing FT_HOME would leave them.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from ftcore import exits, layout
from launcher import jobdir


@pytest.fixture
def sleeper():
    """Start processes that must outlive the test's `ft` commands (each in its own session, as
    ft starts a job's tasks); all are killed afterwards."""
    started = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _job(home, name: str, pids: list, events=({"event": "start"},)):
    folder = home / "jobs" / name
    (folder / layout.LOGS).mkdir(parents=True)
    (folder / layout.CONFIG).write_text("name: tiny\ntrainer:\n  max_steps: 40\n")
    jobdir.write_record(folder, executor="local", job_id=None, factory="tiny", folder=str(folder), pids=pids)
    (folder / layout.EVENTS).write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def _state(ft, folder) -> str:
    result = ft("status", str(folder))
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("state")).split(None, 1)[1]


def test_a_reused_pid_is_neither_running_nor_cancelled(ft, isolated_home, sleeper):
    """The job's process started (and died) earlier; a stranger holds its number now."""
    stranger = sleeper()
    stamp = jobdir.process_stamp(stranger.pid)
    reused = _job(isolated_home, "reused", [{**stamp, "start": stamp["start"] - 1}])
    bare = _job(isolated_home, "bare", [stranger.pid])  # no stamp at all: cannot be proved the job's
    for folder in (reused, bare):
        assert _state(ft, folder) == "FAILED (processes gone)"
        cancelled = ft("cancel", str(folder))
        assert cancelled.returncode == exits.USER_ERROR and "already ended" in cancelled.stderr, cancelled.stderr
    assert stranger.poll() is None


def test_cancel_signals_only_the_processes_that_match_their_stamps(ft, isolated_home, sleeper):
    watcher, task, stranger = sleeper(), sleeper(), sleeper()
    forged = {**jobdir.process_stamp(stranger.pid), "start": 1}
    folder = _job(isolated_home, "mixed", [jobdir.process_stamp(watcher.pid), jobdir.process_stamp(task.pid), forged])
    assert _state(ft, folder) == "RUNNING"
    cancelled = ft("cancel", str(folder))
    assert cancelled.returncode == 0, cancelled.stderr
    assert task.wait(timeout=30) == -signal.SIGTERM
    assert stranger.poll() is None and watcher.poll() is None  # the watcher records the exit: spared


def test_a_job_started_on_another_host_is_not_judged_or_signalled_here(ft, isolated_home, sleeper):
    """FT_HOME shared by two login nodes: a pid recorded there means nothing here."""
    stranger = sleeper()
    there = {**jobdir.process_stamp(stranger.pid), "host": "login-other"}
    folder = _job(isolated_home, "elsewhere", [there])
    assert _state(ft, folder).startswith("RUNNING on login-other")
    cancelled = ft("cancel", str(folder))
    assert cancelled.returncode == exits.USER_ERROR, cancelled.stderr
    assert "runs on login-other, not here" in cancelled.stderr and "ft cancel" in cancelled.stderr
    assert stranger.poll() is None
    events = [json.loads(line)["event"] for line in (folder / layout.EVENTS).read_text().splitlines()]
    assert events == ["start"]  # nothing recorded: nothing was cancelled


def test_a_stamp_from_an_earlier_boot_is_not_running(sleeper):
    live = sleeper()
    stamp = jobdir.process_stamp(live.pid)
    assert jobdir.is_running(stamp)
    assert not jobdir.is_running({**stamp, "boot_id": "another-boot"})
    assert not jobdir.is_running({**stamp, "pid": True}) and not jobdir.is_running("junk")
