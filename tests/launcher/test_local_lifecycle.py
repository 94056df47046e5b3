"""A local job's life through the real `ft` command line: the quickstart as a newcomer runs it,
resubmitting (asked, resumed here, recorded), cancelling, and a killed `ft` whose trainer
went on to finish. Real trainer processes on the tiny model."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import folder_of
from fault_injection import finish_or_show_threads

pytestmark = pytest.mark.train
REPO = Path(__file__).resolve().parents[2]
QUICK = ["trainer.max_steps=4", "trainer.val_every_steps=null", "checkpoint.every_steps=2"]


def wait_for(predicate, timeout=180, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def settled_status(ft, folder: Path) -> str:
    """`ft status` once the job is no longer running."""
    def ended():
        text = ft("status", str(folder)).stdout
        return text if "RUNNING" not in text else None
    return wait_for(ended)


def test_the_quickstart_ends_with_a_model_that_answers(tmp_path):
    """scripts/quickstart.sh as written, with this checkout's ft instead of a fresh .venv."""
    env = dict(os.environ, FT=shlex.join([sys.executable, "-m", "launcher"]), PYTHONPATH=str(REPO), FT_HOME=str(tmp_path / "home"))
    result = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh")], capture_output=True, text=True,
                            env=env, timeout=600, stdin=subprocess.DEVNULL)  # no terminal: nothing may ask
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    val = [float(v) for v in re.findall(r"^step \d+ \| val_loss ([\d.]+)", out, re.M)]
    assert len(val) == 5 and val[-1] < 0.6 * val[0], val  # the held-out loss falls
    assert re.search(r"^step 250/250 \(100%\) \| .* elapsed, 0:00 left$", out, re.M)
    assert re.search(r"^done: 250 steps in \d+:\d\d \| val_loss final [\d.]+ \(step 250\), best", out, re.M)
    exact_match = float(re.search(r"exact match\s*│\s*([\d.]+)", out).group(1))
    assert exact_match >= 50, out[-2000:]
    assert re.search(r"F1\s*│\s*[\d.]+", out)
    assert out.rstrip().splitlines()[-1] == "Lima"  # ft generate: a question it never saw, answered right
    assert "prompt: 'Context: Ben has a black kite." in result.stderr  # the format it trained on


def test_resubmit_asks_resumes_a_local_job_here_and_keeps_every_submission(ft, tmp_path):
    first = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", *QUICK)
    assert first.returncode == 0, first.stderr
    folder = folder_of(first.stderr)
    config = (folder / "config.yaml").read_text()
    no_sbatch = {"PATH": str(tmp_path / "no-slurm")}  # a local job must not need SLURM to resume

    unasked = ft("resubmit", str(folder), "trainer.max_steps=6", env=no_sbatch)
    assert unasked.returncode == 2 and "nothing was submitted" in unasked.stderr
    dry = ft("resubmit", str(folder), "trainer.max_steps=6", "--dry-run", env=no_sbatch)
    assert dry.returncode == 0 and dry.stdout.startswith("#!/bin/bash"), dry.stderr
    assert "trainer.max_steps 4 → 6: this run resumes at step 5 from step-000004" in dry.stderr
    assert "learning-rate schedule changes" in dry.stderr and "nothing changed" in dry.stderr
    assert (folder / "config.yaml").read_text() == config and len((folder / "command.txt").read_text().splitlines()) == 1

    again = ft("resubmit", str(folder), "trainer.max_steps=6", "--yes", env=no_sbatch)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "step 6/6 (100%)" in again.stdout
    assert "step 1/4" not in again.stdout  # the echo shows this run's log, not the first one's again
    commands = (folder / "command.txt").read_text().splitlines()
    assert len(commands) == 2 and commands[1].endswith("resubmit " + f"{folder} trainer.max_steps=6 --yes")
    record = json.loads((folder / "submission.json").read_text())
    assert record["executor"] == "local" and [h["executor"] for h in record["history"]] == ["local"]
    status = ft("status", str(folder)).stdout
    assert "COMPLETED" in status and "6 steps done" in status and "step-000006" in status


def test_a_cancelled_local_job_reads_cancelled_with_its_checkpoint(ft):
    started = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", "--detach",
                 "trainer.max_steps=100000", "trainer.val_every_steps=null", "checkpoint.every_steps=null")
    assert started.returncode == 0, started.stderr
    folder = folder_of(started.stderr)
    wait_for(lambda: (folder / "metrics.jsonl").is_file() and "loss" in (folder / "metrics.jsonl").read_text())
    stamps = json.loads((folder / "submission.json").read_text())["pids"]
    assert all(s["host"] == socket.gethostname() and isinstance(s["start"], int) for s in stamps), stamps
    cancelled = ft("cancel", str(folder))
    assert cancelled.returncode == 0, cancelled.stderr
    status = settled_status(ft, folder)
    assert "state      CANCELLED" in status, status + (folder / "logs" / "rank-0.out").read_text()[-2000:]
    assert re.search(r"checkpoint step-\d{6}", status), status  # written on the way out


def test_a_killed_ft_whose_trainer_finished_reads_what_the_trainer_recorded(ft, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "submit", "--factory", "tiny", "--executor", "local",
                             "--yes", "trainer.max_steps=40", "trainer.val_every_steps=null"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    folder = wait_for(lambda: next((p for p in (Path(os.environ["FT_HOME"]) / "jobs").glob("2*")), None))
    wait_for(lambda: (folder / "metrics.jsonl").is_file())
    proc.send_signal(signal.SIGKILL)  # the terminal closed: ft is gone, its trainer is not
    proc.wait()
    assert not any('"exit"' in line for line in (folder / "events.jsonl").read_text().splitlines())
    status = settled_status(ft, folder)
    assert "state      COMPLETED" in status and "40 steps done" in status, status


def test_ctrl_c_of_a_foreground_local_run_checkpoints_and_resumes(ft, tmp_path):
    """Ctrl-C (SIGINT to ft, not to its tasks' sessions) is a stop signal: the steps since the
    last checkpoint are saved, ft exits 75, the folder does not read FAILED, and a second
    Ctrl-C during the save changes none of it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "submit", "--factory", "tiny", "--executor", "local",
                             "--yes", "trainer.max_steps=100000", "trainer.val_every_steps=null",
                             "checkpoint.every_steps=null", "trainer.log_every_steps=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    folder = wait_for(lambda: next((p for p in (Path(os.environ["FT_HOME"]) / "jobs").glob("2*")), None))
    wait_for(lambda: (folder / "metrics.jsonl").is_file() and "loss" in (folder / "metrics.jsonl").read_text(),
             every=0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = finish_or_show_threads(proc, 180)
    assert proc.returncode == 75, err[-2000:]
    assert "Ctrl-C: the job checkpoints and stops" in out and "Traceback" not in err
    status = ft("status", str(folder)).stdout
    assert "FAILED" not in status and "PREEMPTED" in status, status
    saved = int(re.search(r"checkpoint step-(\d{6})", status).group(1))
    again = ft("resubmit", str(folder), f"trainer.max_steps={saved + 1}", "--yes")
    assert again.returncode == 0 and f"at step {saved}" in again.stdout, again.stderr[-2000:]
