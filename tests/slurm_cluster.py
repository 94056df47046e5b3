"""pytest helpers for the local SLURM test cluster (scripts/slurm-up.sh).

Use in a test module::

    from slurm_cluster import slurm_cluster, wait_for_job, sbatch  # noqa: F401

    @pytest.mark.slurm
    def test_x(slurm_cluster, tmp_path):
        job_id = sbatch(["--wrap", "hostname"], cwd=tmp_path)
        state, fields = wait_for_job(job_id, timeout=60)

The cluster has two virtual nodes, n1 and n2 (two slurmd daemons on this host), in the
default partition ``debug``. There is no accounting: ``sacct`` does not answer, and a
finished job stays visible to ``scontrol show job`` / ``squeue -t all`` only for
MinJobAge (300 s) after it ends.

Quirks of this cluster (Slurm 22.05, verified by tests/test_slurm_cluster.py):
* A requeued job (``scontrol requeue``) waits ~120 s (Reason=BeginTime) before it may
  start again; ``scontrol update JobId=N StartTime=now`` releases it at once.
* ``squeue -j N`` omits finished jobs; ``squeue -t all -j N`` shows them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SLURM_UP = REPO_ROOT / "scripts" / "slurm-up.sh"
STANDIN_DIR = REPO_ROOT / "tests" / "standin"
NODES = ("n1", "n2")
PARTITION = "debug"
USABLE_STATES = frozenset({"idle", "mix", "alloc", "comp"})
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)
LOG_FILES = (
    "/var/log/slurm/slurmctld.log",
    "/var/log/slurm/slurmd-n1.log",
    "/var/log/slurm/slurmd-n2.log",
)


class SlurmJobGone(RuntimeError):
    """scontrol no longer knows the job (it ended more than MinJobAge ago, or never existed)."""


@dataclass
class SlurmCluster:
    nodes: tuple[str, ...] = NODES
    partition: str = PARTITION
    standin_dir: Path = STANDIN_DIR
    node_states: dict[str, str] = field(default_factory=dict)

    def env_with_standin(self, base: dict | None = None) -> dict:
        """A copy of the environment with tests/standin (singularity/apptainer stand-in) first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.standin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env


def node_states() -> dict[str, str]:
    """{node name: short state} from sinfo, e.g. {'n1': 'idle', 'n2': 'mix'}; {} if sinfo fails."""
    if shutil.which("sinfo") is None:
        return {}
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def cluster_is_up() -> bool:
    states = node_states()
    # sinfo %t short states; a suffix such as '*' (not responding) or '~' (powered off) means unusable.
    return all(states.get(n) in USABLE_STATES for n in NODES)


def _daemon_logs(tail: int = 30) -> str:
    chunks = []
    for path in LOG_FILES:
        p = Path(path)
        if p.is_file():
            lines = p.read_text(errors="replace").splitlines()[-tail:]
            chunks.append(f"----- {path} (last {tail} lines) -----\n" + "\n".join(lines))
    return "\n".join(chunks) or "(no slurm daemon logs found)"


def ensure_cluster() -> SlurmCluster:
    """Return the running cluster, starting it with scripts/slurm-up.sh when we are root.

    When it cannot be had: pytest.skip locally, pytest.fail when CI=true.
    """
    if cluster_is_up():
        return SlurmCluster(node_states=node_states())
    detail = ""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        reason = "SLURM client tools (sinfo/sbatch) are not installed (apt-get install slurm-wlm munge)"
    elif os.geteuid() != 0:
        reason = f"the local SLURM cluster is not up and only root can start it (run: sudo {SLURM_UP})"
    elif not SLURM_UP.is_file():
        reason = f"the local SLURM cluster is not up and {SLURM_UP} is missing"
    else:
        proc = subprocess.run(
            ["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=300
        )
        if proc.returncode == 0 and cluster_is_up():
            return SlurmCluster(node_states=node_states())
        reason = f"scripts/slurm-up.sh failed (exit {proc.returncode}); node states: {node_states()}"
        detail = f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"SLURM cluster unavailable on CI: {reason}{detail}\n{_daemon_logs()}", pytrace=False)
    pytest.skip(f"SLURM cluster unavailable: {reason}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The local two-node SLURM cluster (n1, n2, partition debug), started if needed."""
    return ensure_cluster()


_FIELD_SPLIT = re.compile(r"\s+(?=[A-Za-z][A-Za-z0-9_:/]*=)")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """Parse one line of `scontrol show job -o` into {key: value}.

    Values may contain spaces (JobName, Comment, Command); a field starts at whitespace
    followed by `Key=`.
    """
    fields: dict[str, str] = {}
    for part in _FIELD_SPLIT.split(line.strip()):
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return fields


def job_fields(job_id: int | str) -> dict[str, str]:
    """The fields of one job from `scontrol show job -o`; raises SlurmJobGone if unknown."""
    proc = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        msg = (proc.stderr or proc.stdout).strip()
        if "Invalid job id" in msg or not proc.stdout.strip():
            raise SlurmJobGone(f"scontrol does not know job {job_id}: {msg or 'no output'}")
        raise RuntimeError(f"scontrol show job {job_id} failed (exit {proc.returncode}): {msg}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    for ln in lines:
        f = parse_scontrol_record(ln)
        if f.get("JobId") == str(job_id):
            return f
    return parse_scontrol_record(lines[0])


def job_state(fields: dict[str, str]) -> str:
    # JobState can carry a flag suffix in some versions, e.g. "CANCELLED by 0" is in Reason.
    return fields.get("JobState", "").split()[0] if fields.get("JobState") else ""


def wait_for_job(job_id: int | str, timeout: float = 120.0, poll: float = 0.5) -> tuple[str, dict[str, str]]:
    """Poll `scontrol show job -o JOB_ID` until the job reaches a terminal state.

    Returns (state, fields), e.g. ("COMPLETED", {"JobId": "7", "ExitCode": "0:0", ...}).
    Raises TimeoutError after `timeout` seconds (with the last fields seen) and
    SlurmJobGone if scontrol forgets the job (MinJobAge=300 s after it ended).
    """
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while True:
        try:
            last = job_fields(job_id)
        except SlurmJobGone as exc:
            raise SlurmJobGone(f"{exc} (last seen: {job_state(last) or 'never'})") from None
        state = job_state(last)
        if state in TERMINAL_STATES:
            return state, last
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"job {job_id} still {state or '?'} after {timeout:.0f}s "
                f"(Reason={last.get('Reason')}, NodeList={last.get('NodeList')})"
            )
        time.sleep(poll)


def wait_for_state(job_id: int | str, states: set[str] | frozenset[str], timeout: float = 60.0,
                   poll: float = 0.3) -> tuple[str, dict[str, str]]:
    """Poll until the job is in one of `states` (e.g. {"RUNNING"}); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job_fields(job_id)
        state = job_state(fields)
        if state in states:
            return state, fields
        if state in TERMINAL_STATES - set(states):
            raise AssertionError(f"job {job_id} ended {state} while waiting for {sorted(states)}: {fields}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f}s, wanted {sorted(states)}")
        time.sleep(poll)


def sbatch(args: list[str], cwd: str | os.PathLike | None = None, env: dict | None = None) -> int:
    """Submit with `sbatch --parsable ARGS...` and return the job id."""
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return int(proc.stdout.strip().split(";")[0])


def wait_until(predicate, timeout: float, what) -> None:
    """Poll `predicate` until it is true; after `timeout` s raise with `what` (text, or a function
    that describes the state, called only then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what() if callable(what) else what)


def wait_for_file(path: str | os.PathLike, timeout: float = 60.0, contains: str | None = None) -> str:
    """Wait until `path` exists (and holds `contains`, if given); return its text."""
    p = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        if p.is_file():
            text = p.read_text(errors="replace")
            if contains is None or contains in text:
                return text
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{p} did not appear{'' if contains is None else f' with {contains!r}'} in {timeout:.0f}s")
        time.sleep(0.2)
