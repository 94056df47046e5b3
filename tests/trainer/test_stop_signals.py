"""Stop signals wherever the job is, through `python -m trainer` as srun and `ft train` start it.

A preempted or timed-out job must exit 75 (requeue me) whether the signal finds it importing,
tokenizing, validating or training; a second signal must not turn that 75 into a death by
signal; Ctrl-C (SIGINT) is a stop signal too. And a rank whose rank 0 died while tokenizing
gives up with a message instead of waiting for ever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_helpers import REPO, SQUAD, clean_env, describe, finish, read_metrics, start, tiny_job, write_config, \
    write_jsonl

from ftcore import exits, layout

pytestmark = pytest.mark.train


def _trainer(config: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config), "--events"], cwd=REPO,
                            env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _events(job_dir: Path) -> list[dict]:
    path = job_dir / layout.EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the trainer ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def _many_records(path: Path, n: int) -> Path:
    return write_jsonl(path, [{**SQUAD, "question": f"Where does Ada live, number {i}?"} for i in range(n)])


def test_a_stop_while_importing_exits_75_at_once_and_is_recorded(tmp_path):
    """The signal finds the trainer importing torch (right after its start event): it ends at
    once with 75, not killed (143), and the folder records the signal and the exit."""
    config = write_config(tmp_path / "job", tiny_job(trainer={"max_steps": 2}))
    proc = _trainer(config)
    _wait_for(lambda: _events(tmp_path / "job"), proc, "start event")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == exits.REQUEUE, err
    assert "during start-up" in err and "Traceback" not in err
    assert [e["event"] for e in _events(tmp_path / "job")] == ["start", "signal", "exit"]
    assert _events(tmp_path / "job")[-1]["code"] == exits.REQUEUE
    assert layout.newest_complete(tmp_path / "job") is None


def test_a_stop_in_the_first_second_takes_the_stop_path(tmp_path):
    """A SIGTERM while `python -m trainer` still imports its first modules (here as pydantic, the
    first slow one, begins to load; a sitecustomize hook sends it) exits 75, not 143."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal, sys\n"
        "class SignalOnImport:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pydantic':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "        return None\n"
        "sys.meta_path.insert(0, SignalOnImport())\n")
    config = write_config(tmp_path / "job", tiny_job(trainer={"max_steps": 2}))
    env = clean_env()
    env["PYTHONPATH"] = f"{hook}:{env['PYTHONPATH']}"
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config), "--events"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == exits.REQUEUE, (result.returncode, result.stderr)
    assert "got SIGTERM during start-up" in result.stderr and "Traceback" not in result.stderr


def test_a_stop_while_tokenizing_ends_inside_the_work(tmp_path):
    data = _many_records(tmp_path / "big.jsonl", 15_000)
    raw = tiny_job(data={"path": str(data), "val_fraction": 0.0}, trainer={"max_steps": 1})
    config = write_config(tmp_path / "job", raw)
    proc = _trainer(config)
    cache = tmp_path / "job" / layout.TOKEN_CACHE
    _wait_for(lambda: list(cache.glob("*.busy")), proc, "tokenizing")
    signalled = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == exits.REQUEUE, err
    assert time.monotonic() - signalled < 5, "it went on tokenizing instead of stopping"
    assert not list(cache.glob("tokens-*.pt")), "half a token cache was kept"


def test_a_stop_during_validation_checkpoints_that_step(tmp_path):
    """A long validation pass is cut short: the step just trained is checkpointed, exit 75."""
    val = _many_records(tmp_path / "val.jsonl", 3000)
    raw = tiny_job(data={"val_path": str(val), "val_fraction": 0.0, "micro_batch_size": 1, "global_batch_size": 2},
                   trainer={"max_steps": 4, "val_every_steps": 1, "log_every_steps": 1})
    config = write_config(tmp_path / "job", raw)
    proc = _trainer(config)
    _wait_for(lambda: any("loss" in r for r in read_metrics(tmp_path / "job")), proc, "first step")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == exits.REQUEUE, err
    assert "stop requested (a stop signal during validation): checkpointing step 1" in out
    assert layout.newest_complete(tmp_path / "job").name == "step-000001"
    assert not [r for r in read_metrics(tmp_path / "job") if "val_loss" in r], "a cut validation was recorded"


def test_ctrl_c_checkpoints_and_later_signals_keep_the_requeue_status(tmp_path):
    """SIGINT stops like SIGTERM; a volley of signals after it (a site's scancel, a second
    Ctrl-C) is only noted: the exit stays 75, so the job is requeued."""
    raw = tiny_job(trainer={"max_steps": 2000, "log_every_steps": 1}, checkpoint={"every_steps": 1, "keep_last": 1})
    config = write_config(tmp_path / "job", raw)
    proc = _trainer(config)
    _wait_for(lambda: layout.newest_complete(tmp_path / "job") is not None, proc, "first checkpoint")
    proc.send_signal(signal.SIGINT)
    _wait_for(lambda: any(e["event"] == "signal" for e in _events(tmp_path / "job")), proc, "the signal noted")
    while proc.poll() is None:  # until it has exited: through the save, the shutdown and the exit
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                break
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == exits.REQUEUE, err
    assert "(the last checkpoint took " in out  # what a site's KillWait must leave room for
    assert "got SIGINT; will checkpoint after this step" in err and err.count("already stopping") == 1
    stopped = layout.newest_complete(tmp_path / "job")
    assert stopped is not None and int(stopped.name.split("-")[1]) < 2000
    events = _events(tmp_path / "job")
    assert [(e["event"], e.get("signal"), e.get("code")) for e in events] == [
        ("start", None, None), ("signal", "SIGINT", None), ("exit", None, exits.REQUEUE)]


def test_a_checkpoint_slower_than_the_clusters_kill_wait_is_said_once(tmp_path):
    """ft's script exports the cluster's KillWait: a checkpoint that takes longer (here every
    one, against 0 s) is a save a cancel or preemption could not finish, and the log says so
    once, with the figures and what to change; without the variable nothing is said."""
    raw = tiny_job(trainer={"max_steps": 3}, checkpoint={"every_steps": 1})
    told = subprocess.run([sys.executable, "-m", "trainer", "--config", str(write_config(tmp_path / "told", raw))],
                          cwd=REPO, env=clean_env(**{exits.KILL_WAIT_VAR: "0"}), capture_output=True, text=True,
                          timeout=240)
    assert told.returncode == 0, told.stderr
    assert told.stdout.count("(KillWait)") == 1, told.stdout
    assert "longer than the 0 s this cluster leaves a job between SIGTERM and SIGKILL" in told.stdout
    assert "checkpoint.every_steps" in told.stdout
    quiet = subprocess.run([sys.executable, "-m", "trainer", "--config", str(write_config(tmp_path / "quiet", raw))],
                           cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert quiet.returncode == 0 and "KillWait" not in quiet.stdout, quiet.stdout


@pytest.mark.parametrize("value", ["²", "١٢", "5" * 5000, "-3", "1e3", " 12", "12 ", "0x10", "", "999999"])
def test_an_odd_kill_wait_is_not_one(value):
    assert exits.kill_wait_s({exits.KILL_WAIT_VAR: value}) == (999999 if value == "999999" else None)


def test_an_odd_kill_wait_in_the_environment_does_not_end_the_trainer_after_its_checkpoint(tmp_path):
    raw = tiny_job(trainer={"max_steps": 2}, checkpoint={"every_steps": 1})
    result = subprocess.run([sys.executable, "-m", "trainer", "--config", str(write_config(tmp_path / "job", raw))],
                            cwd=REPO, env=clean_env(**{exits.KILL_WAIT_VAR: "²"}), capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "KillWait" not in result.stdout and layout.newest_complete(tmp_path / "job").name == "step-000002"


def test_the_other_ranks_give_up_when_rank_0_dies_while_tokenizing(tmp_path):
    data = _many_records(tmp_path / "big.jsonl", 15_000)
    raw = tiny_job(data={"path": str(data), "val_fraction": 0.0}, trainer={"max_steps": 1, "devices": 2})
    config = write_config(tmp_path / "job", raw)
    procs = start(config, nprocs=2)
    cache = tmp_path / "job" / layout.TOKEN_CACHE
    _wait_for(lambda: list(cache.glob("*.busy")), procs[0], "tokenizing")
    procs[0].kill()
    killed = time.monotonic()
    results = finish(procs, timeout=120)
    assert results[1].returncode == 1, describe(results)
    assert time.monotonic() - killed < 60
    # (On rank 0's node its process is seen gone; elsewhere its heartbeat goes silent.)
    assert "ended while it tokenized the data" in results[1].stderr and "Traceback" not in results[1].stderr


@pytest.mark.parametrize("offset_s", [365 * 86400, -365 * 86400])
def test_rank_0s_silence_is_measured_by_the_waiting_ranks_own_clock(tmp_path, monkeypatch, offset_s):
    """A dead rank 0's heartbeat dated a year ahead of this machine (a file server's clock is
    another machine's) still goes silent; one dated a year behind is not silent at once."""
    from trainer import data

    monkeypatch.setattr(data, "PEER_SILENT_S", 1.5)
    busy = tmp_path / "tokens-x.busy"
    busy.write_text("{}")
    stamp = time.time() + offset_s
    os.utime(busy, (stamp, stamp))

    def too_long(signum, frame):
        raise TimeoutError("still waiting for a rank 0 that is gone")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(20)
    started = time.monotonic()
    try:
        with pytest.raises(data.PeerGone, match="rank 0 stopped tokenizing the data"):
            data._wait_for(tmp_path / "tokens-x.pt", tmp_path / "tokens-x.error", busy)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert 1.5 <= time.monotonic() - started < 10


def test_a_rank_on_rank_0s_node_sees_at_once_that_it_is_gone(tmp_path, monkeypatch):
    """Rank 0's heartbeat names its process; on its node the others need not wait out its silence."""
    from trainer import data

    monkeypatch.setattr(data, "PEER_SILENT_S", 10.0)
    busy = tmp_path / "tokens-x.busy"
    busy.write_text(json.dumps({**data._process_here(), "pid": _dead_pid()}))
    started = time.monotonic()
    with pytest.raises(data.PeerGone, match=r"rank 0 \(process \d+ on this node\) ended while it tokenized"):
        data._wait_for(tmp_path / "tokens-x.pt", tmp_path / "tokens-x.error", busy)
    assert time.monotonic() - started < 5
    busy.write_text(json.dumps({**data._process_here(), "host": "another-node", "pid": _dead_pid()}))
    assert data._gone_here(busy) is None  # elsewhere: its heartbeat tells
    busy.write_text(json.dumps(data._process_here()))
    assert data._gone_here(busy) is None  # alive
    zombie = subprocess.Popen(["true"])
    time.sleep(0.5)  # ended, not yet reaped
    busy.write_text(json.dumps({**data._process_here(), "pid": zombie.pid}))
    assert data._gone_here(busy) == f"process {zombie.pid} on this node"
    zombie.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _patience(monkeypatch):
    monkeypatch.setenv("FT_PEER_SILENT_S", "4")


def test_a_stopped_run_in_this_process_gives_the_signals_back():
    """Only `python -m trainer`, which exits next, keeps ignoring stop signals after a stop; a
    caller that goes on gets its own handlers back (ignored signals would be inherited by every
    process it starts later: its Ctrl-C and SIGTERM would stop reaching them)."""
    from trainer.stop import StopSignal

    before = {s: signal.getsignal(s) for s in StopSignal.SIGNALS}
    stop = StopSignal()
    stop.install()
    stop.training()
    signal.raise_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stop.requested
    stop.uninstall()
    assert {s: signal.getsignal(s) for s in StopSignal.SIGNALS} == before
