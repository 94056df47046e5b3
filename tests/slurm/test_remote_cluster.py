"""`ft ... --cluster` from a "laptop" (this test, root, in a folder outside the checkout) to a
"cluster" reached over a real OpenSSH server as a second local user, ftremote, whose login node
is the local SLURM cluster (tests/ssh_cluster.py, scripts/ssh-up.sh). The jobs are real: the
tiny model trains on CPU under SLURM as ftremote, in ftremote's FT_HOME.

The test process is also the cluster's administrator: it reads the cluster's folders directly
and preempts a job with `scontrol requeue`, as a site does."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import job_fields, wait_for_job, wait_until
from ssh_cluster import USER, SshCluster

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.train]

SHORT = ["trainer.max_steps=6", "trainer.val_every_steps=3", "checkpoint.every_steps=3",
         "slurm.time=00:05:00", "slurm.partition=debug"]


def submitted(result) -> tuple[str, Path]:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    job_id = next(line for line in lines if line.startswith("Submitted batch job ")).split()[-1]
    folder = Path(next(line for line in lines if line.startswith("Job folder: ")).split(": ", 1)[1])
    return job_id, folder


def laptop_folder(tmp_path: Path) -> Path:
    """A factory and a data file in a folder of the laptop that ftremote cannot read."""
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    (laptop / "my.yaml").write_text("extends: tiny\ndescription: written on a laptop\n")
    shutil.copy(REPO / "factories" / "data" / "tiny_qa.jsonl", laptop / "qa.jsonl")
    return laptop


def steps(folder: Path) -> list[int]:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line)["step"] for line in lines if line.endswith("}") and '"loss"' in line]


def events(folder: Path) -> list[str]:
    try:
        return [json.loads(line)["event"] for line in (folder / "events.jsonl").read_text().splitlines()]
    except OSError:
        return []


def test_submit_from_a_laptop_folder_follow_status_jobs_and_plot(slurm_cluster, ft, ssh_cluster: SshCluster, tmp_path):
    laptop = laptop_folder(tmp_path)
    assert ssh_cluster.ssh("test", "-r", str(laptop / "qa.jsonl")).returncode != 0, "the cluster must not see the laptop"
    result = ft("submit", "--cluster", "ftc", "--factory", "my.yaml", "data.path=./qa.jsonl",
                *SHORT, "trainer.max_steps=12", "--yes", cwd=laptop)
    job_id, folder = submitted(result)
    assert "data.path: ./qa.jsonl → sent with the job" in result.stderr
    assert str(folder).startswith(str(ssh_cluster.ft_home / "jobs"))
    assert folder.stat().st_uid == pwd.getpwnam(USER).pw_uid  # ftremote's job, in ftremote's FT_HOME
    sent = Path(yaml.safe_load((folder / "config.yaml").read_text())["data"]["path"])
    assert sent.read_bytes() == (laptop / "qa.jsonl").read_bytes() and str(sent).startswith(str(ssh_cluster.ft_home))

    # `ft logs -f` streams: the first step arrives while the job still runs, the last at its end.
    follow = subprocess.Popen([sys.executable, "-m", "launcher", "logs", "--cluster", "ftc", job_id, "-f"], cwd=laptop,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    first_step_state = None
    lines = []
    for line in follow.stdout:
        lines.append(line)
        if first_step_state is None and "step 1/12" in line:
            first_step_state = job_fields(job_id)["JobState"]
    assert follow.wait(timeout=300) == 0, follow.stderr.read() if follow.stderr else ""
    assert first_step_state == "RUNNING", "".join(lines)
    assert any("step 12/12" in line for line in lines), "".join(lines)

    status = ft("status", "--cluster", "ftc", job_id, cwd=laptop)
    assert status.returncode == 0 and "COMPLETED" in status.stdout and str(folder) in status.stdout
    listed = ft("jobs", "--cluster", "ftc", "--json", cwd=laptop)
    assert listed.returncode == 0, listed.stderr
    assert [(r["id"], r["state"]) for r in json.loads(listed.stdout)] == [(job_id, "COMPLETED")]
    plot = ft("plot", "--cluster", "ftc", job_id, "--out", str(tmp_path / "curves.png"), cwd=laptop)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG" and not (folder / "metrics.png").exists()


def test_cancel_then_resubmit_resumes_from_the_checkpoint(slurm_cluster, ft, ssh_cluster, tmp_path):
    job_id, folder = submitted(ft("submit", "--cluster", "ftc", "--factory", "tiny", *SHORT,
                                  "trainer.max_steps=400", "trainer.val_every_steps=null", "--yes"))
    wait_until(lambda: (folder / "checkpoints" / "latest").exists() and max(steps(folder), default=0) >= 4, 240,
               f"job {job_id} wrote no checkpoint")
    cancel = ft("cancel", "--cluster", "ftc", job_id)
    assert cancel.returncode == 0 and f"cancelled {job_id}" in cancel.stdout, cancel.stderr
    wait_until(lambda: "CANCELLED" in ft("status", "--cluster", "ftc", job_id).stdout, 120, "not cancelled")
    stopped_at = max(steps(folder))

    again, same = submitted(ft("resubmit", "--cluster", "ftc", job_id, "trainer.max_steps=" + str(stopped_at + 3),
                               "--yes"))
    assert same == folder and again != job_id
    state, _ = wait_for_job(again, timeout=300)
    assert state == "COMPLETED", "\n".join(p.read_text() for p in (folder / "logs").glob("*.out"))
    assert events(folder).count("start") == 2
    log = (folder / "logs" / f"slurm-{again}.out").read_text()
    assert "resumed from" in log and max(steps(folder)) == stopped_at + 3
    status = ft("status", "--cluster", "ftc", again)
    assert "COMPLETED" in status.stdout and "2 start(s)" in status.stdout


def test_a_sweep_runs_as_one_array(slurm_cluster, ft, ssh_cluster, tmp_path):
    job_id, folder = submitted(ft("submit", "--cluster", "ftc", "--factory", "tiny", *SHORT,
                                  "trainer.max_steps=3", "--sweep", "optim.lr=1e-3,3e-3", "--yes"))
    for task in (0, 1):
        state, _ = wait_for_job(f"{job_id}_{task}", timeout=300)
        assert state == "COMPLETED", state
    status = ft("status", "--cluster", "ftc", job_id)
    assert "task 0: COMPLETED" in status.stdout and "task 1: COMPLETED" in status.stdout, status.stdout
    lrs = [yaml.safe_load((folder / "tasks" / str(t) / "config.yaml").read_text())["optim"]["lr"]
           for t in (0, 1)]
    assert lrs == [1e-3, 3e-3]


def test_a_preempted_job_resumes_and_the_laptop_sees_it(slurm_cluster, ft, ssh_cluster, tmp_path):
    job_id, folder = submitted(ft("submit", "--cluster", "ftc", "--factory", "tiny", *SHORT,
                                  "trainer.max_steps=40", "trainer.val_every_steps=null", "--yes"))
    wait_until(lambda: max(steps(folder), default=0) >= 5, 240, f"job {job_id} never reached step 5")
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)  # what a site's preemption does
    wait_until(lambda: job_fields(job_id).get("JobState") == "PENDING", 90, "requeued job is not pending")
    assert "PENDING" in ft("status", "--cluster", "ftc", job_id).stdout
    time.sleep(15)  # the old run's credential must be revoked before it may start again
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
    state, fields = wait_for_job(job_id, timeout=300)
    log = (folder / "logs" / f"slurm-{job_id}.out").read_text()
    assert state == "COMPLETED" and fields.get("Restarts") == "1", log
    assert events(folder).count("start") == 2 and "resumed from" in log
    assert max(steps(folder)) == 40
    status = ft("status", "--cluster", "ftc", job_id)
    assert "COMPLETED" in status.stdout and "2 start(s)" in status.stdout


def test_one_master_connection_serves_many_commands(ft, ssh_cluster):
    """With ControlMaster in the user's ssh config, ft logs in once; without it, once per command."""
    subprocess.run(["ssh", "-F", str(ssh_cluster.ssh_config), "-O", "exit", "ft-test"], capture_output=True, timeout=30)
    before = ssh_cluster.logins()
    for words in (["jobs"], ["jobs", "--json"], ["status", "nothing-here"], ["jobs", "--all"]):
        ft(*words, "--cluster", "ftc")
    reused = ssh_cluster.logins() - before
    for words in (["jobs"], ["jobs", "--json"]):
        assert ft(*words, "--cluster", "ftc-plain").returncode == 0
    plain = ssh_cluster.logins() - before - reused
    assert (reused, plain) == (1, 2)


def test_a_host_that_wants_a_password_gets_the_message_and_no_hang(ft, ssh_cluster):
    started = time.monotonic()
    result = ft("jobs", "--cluster", "ftc-2fa")
    assert time.monotonic() - started < 30
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "wants a password or a second factor" in result.stderr
    assert "ssh -fNM ft-test-2fa" in result.stderr and "ControlPersist" in result.stderr


def test_hostile_names_and_words_inject_nothing(ft, ssh_cluster, tmp_path):
    marker = tmp_path / "pwned"
    for name in (f"-oProxyCommand=touch {marker}", "ft c", "ftc\n-oProxyCommand=x", "-F/dev/null"):
        result = ft("jobs", "--cluster", name)
        assert result.returncode == 2 and "not a host or user name" in result.stderr, result.stderr
    # A job id that is shell on the login node reaches the cluster's ft as one plain word.
    remote_marker = ssh_cluster.ft_home / "pwned"
    result = ft("status", "--cluster", "ftc", f"$(touch {remote_marker}); touch {remote_marker}")
    assert result.returncode == 2 and "no job" in result.stderr, result.stderr
    assert not marker.exists() and not remote_marker.exists()
