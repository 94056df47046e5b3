"""`--cluster` against a cluster whose answers cannot be trusted: a real OpenSSH server on
loopback (tests/ssh_cluster.py) whose "ft" is a shell line that prints what a broken or hostile
ft would (invalid JSON, wrong types, a huge answer, terminal escape sequences, nothing at all).

What must hold: one-line errors with exit 2, bounded memory and time, only printable text on
the user's terminal, no file outside the working folder, private uploads, the commands ft
started there stopped when it gives up on them, and a submit whose answer never came said to
be one that may exist."""

from __future__ import annotations

import json
import os
import pwd
import random
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ssh_cluster import USER, SshCluster

REPO = Path(__file__).resolve().parents[2]
ESCAPES = "\x1b]52;c;cHduZWQ=\x07\x1b]0;owned title\x07\x1b[2J\x1bc\x9b2J\x07\x08"


def hostile(ssh_cluster: SshCluster, name: str, script: str, **entry) -> str:
    """A `clusters:` entry NAME whose ft is `sh -c SCRIPT` on the test sshd's login node."""
    config = Path(os.environ["FT_CONFIG_DIR"]) / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["clusters"][name] = {"host": "ft-test", "ft": shlex.join(["sh", "-c", script, "sh"]),
                              "ft_home": str(ssh_cluster.ft_home), **entry}
    config.write_text(yaml.safe_dump(data))
    return name


def printing(text: str) -> str:
    """A shell line that prints `text` exactly (any bytes but NUL)."""
    return f"printf %s {shlex.quote(text)}"


def remote_processes(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-u", USER, "-f", pattern], capture_output=True, text=True)
    return found.stdout.split()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(what)
        time.sleep(0.2)


def start_ft(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher", *args], cwd=cwd, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def one_line_error(result, *phrases: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "\nft: error: " in "\n" + result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# --- 5: uploads -------------------------------------------------------------------------------


def test_uploads_are_as_private_as_job_folders(ssh_cluster, tmp_path):
    from launcher import remote
    from launcher.config import resolve

    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "private?", "answer": "yes"}\n' * 4)
    upload = remote.plan_upload(resolve("tiny", [f"data.path={data}"]).job, "ftc")
    job_yaml, _ = remote.send(remote.cluster("ftc"), upload, "tiny")
    folder = Path(job_yaml.parent)
    assert folder.parent == ssh_cluster.ft_home / "uploads"
    for path in (folder.parent, folder, folder / "files"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    sent = [folder / "job.yaml", folder / "profile.yaml", folder / "files" / "data.path-qa.jsonl"]
    for path in sent:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.stat().st_uid == pwd.getpwnam(USER).pw_uid
    assert sent[2].read_text() == data.read_text()


# --- 6, 7: what the cluster's ft answers --------------------------------------------------------


def test_plot_writes_only_here_under_a_name_without_paths_or_control_characters(ssh_cluster, ft, tmp_path):
    run_dir = ssh_cluster.ft_home / "runs" / "one"
    metrics = "".join(json.dumps({"step": s, "loss": 2.0 / s}) + "\n" for s in range(1, 5))
    made = ssh_cluster.ssh(shlex.join(["sh", "-c", 'mkdir -p "$1" && printf %s "$2" > "$1/metrics.jsonl"', "sh",
                                       str(run_dir), metrics]))
    assert made.returncode == 0, made.stderr
    outside = tmp_path / "escaped"
    for job in ("../escaped/x", f"{outside}/y", "a\x1b]0;t\x07\nb/../../escaped/z"):
        answer = json.dumps([{"label": "run\x1b[2J", "folder": str(run_dir), "job": job + " (tiny)"}])
        name = hostile(ssh_cluster, "odd", printing(answer + "\n"))
        here = tmp_path / "work"
        here.mkdir(exist_ok=True)
        result = ft("plot", "--cluster", name, "1", cwd=here)
        assert result.returncode == 0, result.stderr
        written = Path(result.stdout.strip())
        assert written.parent == Path(".") and (here / written).read_bytes()[:4] == b"\x89PNG", result.stdout
        assert not any(ord(c) < 32 or c in "/\x7f" for c in written.name), written.name
    assert not outside.exists()
    assert sorted(p.parent for p in tmp_path.rglob("*.png")) == [tmp_path / "work"] * 3


ODD_ANSWERS = {
    "not JSON": "Welcome to the cluster! Maintenance on Friday.\n",
    "a number": "42\n",
    "an object": '{"folder": "/x"}\n',
    "a list of numbers": "[1, 2]\n",
    "a field missing": '[{"label": "a", "job": "b"}]\n',
    "a field of another type": '[{"label": "a", "folder": 7, "job": "b"}]\n',
    "a relative folder": '[{"label": "a", "folder": "../../etc", "job": "b"}]\n',
    "a folder with an escape": '[{"label": "a", "folder": "/x\\u001b]0;t\\u0007", "job": "b"}]\n',
    "nested deep": None,  # 100,000 '['
    "empty": "",
}


@pytest.mark.parametrize("what", sorted(ODD_ANSWERS))
def test_an_odd_answer_from_the_clusters_ft_is_one_error(ssh_cluster, ft, what):
    answer = ODD_ANSWERS[what]
    name = hostile(ssh_cluster, "odd", "head -c 100000 /dev/zero | tr '\\0' '['" if answer is None else printing(answer))
    result = ft("plot", "--cluster", name, "1")
    one_line_error(result, "cluster odd: ")
    assert len(result.stderr.splitlines()) <= 2 and "\x1b" not in result.stderr, result.stderr


def test_escape_sequences_from_the_cluster_reach_the_terminal_as_text(ssh_cluster, ft):
    script = (f"{printing('jobs ' + ESCAPES + ' listed')}; printf '\\000\\n'; "
              f"{printing('warn ' + ESCAPES + ' said')} >&2")
    result = ft("jobs", "--cluster", hostile(ssh_cluster, "loud", script))
    assert result.returncode == 0, result.stderr
    assert "jobs " in result.stdout and " listed" in result.stdout and "warn " in result.stderr
    for shown in (result.stdout, result.stderr):
        assert not any(c in shown for c in "\x1b\x07\x9b\x08\x00"), repr(shown)
    assert "^[]52;c;" in result.stdout  # shown, not obeyed


def test_a_huge_answer_is_refused_and_memory_stays_bounded(ssh_cluster, tmp_path):
    name = hostile(ssh_cluster, "huge", "head -c 1000000000 /dev/zero | tr '\\0' '['")
    # A process of its own whose only child is ft: its children's peak RSS is ft's (or ssh's).
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.returncode); "
               "print(r.stderr, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "launcher", "plot", "--cluster",
                             name, "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    peak_kib, status = map(int, result.stdout.split())
    assert status == 2 and "larger than 4 MiB" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "ft stopped the command it had started there" in result.stderr, result.stderr
    assert peak_kib < 250 * 1024, f"ft grew to {peak_kib / 1024:.0f} MiB"
    wait_for(lambda: not remote_processes("head -c 1000000000"), 20, "the remote command still runs")


# --- 7: no answer, Ctrl-C -----------------------------------------------------------------------


@pytest.fixture
def sleep():
    """A sleep no other test (or run) starts there, to find it among the remote processes;
    whatever of it is left at the end is ended (the test's own processes only)."""
    command = f"sleep {random.randrange(10**6, 10**7)}"
    yield command
    for pid in remote_processes(command):
        os.kill(int(pid), signal.SIGKILL)


def test_a_command_that_never_answers_times_out_and_is_stopped_there(ssh_cluster, ft, sleep):
    name = hostile(ssh_cluster, "stuck", sleep, timeout=3)
    started = time.monotonic()
    result = ft("jobs", "--cluster", name)
    assert time.monotonic() - started < 30
    one_line_error(result, "no answer within 3 s", "ft stopped the command it had started there",
                   "clusters.stuck.timeout")
    wait_for(lambda: not remote_processes(sleep), 20, "the remote command still runs")


def test_ctrl_c_stops_the_command_there(ssh_cluster, tmp_path, sleep):
    name = hostile(ssh_cluster, "stuck", sleep)
    follow = start_ft("logs", "--cluster", name, "1", "-f", cwd=tmp_path)
    wait_for(lambda: remote_processes(sleep), 30, "the remote command never started")
    follow.send_signal(signal.SIGINT)
    follow.wait(timeout=60)
    assert "Traceback" not in follow.stderr.read()
    wait_for(lambda: not remote_processes(sleep), 20, "the remote command still runs after Ctrl-C")


# --- 8: a submit whose answer never came --------------------------------------------------------


def _submit_in_flight(ssh_cluster, tmp_path, sleep: str) -> subprocess.Popen:
    """`ft submit --cluster` whose upload went through and whose remote `ft submit` hangs."""
    name = hostile(ssh_cluster, "slow", sleep)
    submit = start_ft("submit", "--cluster", name, "--factory", "tiny", "--yes", cwd=tmp_path)
    wait_for(lambda: remote_processes(sleep), 60, "the remote submit never started")
    return submit


def _ssh_children(pid: int, marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and cmdline.startswith(b"ssh\0") and marker.encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_ctrl_c_mid_submit_says_the_job_may_exist_and_how_to_find_it(ssh_cluster, tmp_path, sleep):
    submit = _submit_in_flight(ssh_cluster, tmp_path, sleep)
    submit.send_signal(signal.SIGINT)
    out, err = submit.communicate(timeout=60)
    result = subprocess.CompletedProcess(submit.args, submit.returncode, out, err)
    one_line_error(result, "interrupted while the cluster's ft was submitting", "may have been submitted",
                   str(ssh_cluster.ft_home / "uploads"), "ft jobs --cluster slow", "squeue --me")
    wait_for(lambda: not remote_processes(sleep), 20, "the remote submit still runs after Ctrl-C")


def test_ssh_dying_mid_submit_says_the_job_may_exist_and_how_to_find_it(ssh_cluster, tmp_path, sleep):
    submit = _submit_in_flight(ssh_cluster, tmp_path, sleep)
    for pid in _ssh_children(submit.pid, sleep):
        os.kill(pid, signal.SIGKILL)
    out, err = submit.communicate(timeout=60)
    result = subprocess.CompletedProcess(submit.args, submit.returncode, out, err)
    one_line_error(result, "the connection to ft-test was lost while the cluster's ft was submitting",
                   "may have been submitted", "ft jobs --cluster slow")


def test_a_reader_that_leaves_ends_the_relay_quietly(ssh_cluster, tmp_path):
    """`ft jobs --cluster X | head -1`: the pipe closes under a long answer."""
    name = hostile(ssh_cluster, "long", "yes 'job 4242 RUNNING' | head -n 2000000")
    jobs = start_ft("jobs", "--cluster", name, cwd=tmp_path)
    assert jobs.stdout.readline() == "job 4242 RUNNING\n"
    jobs.stdout.close()
    jobs.wait(timeout=60)
    said = jobs.stderr.read()
    assert "Traceback" not in said and "Exception in thread" not in said, said
    wait_for(lambda: not remote_processes("head -n 2000000"), 20, "the remote command still runs")
