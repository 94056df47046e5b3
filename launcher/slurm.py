"""The one seam to SLURM: every sbatch, squeue, scontrol and scancel call goes through here.

Output that cannot be read raises a SchedulerError carrying the raw text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ftcore.errors import UserError

TERMINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
}
_JOB_ID = re.compile(r"^(\d+)(?:;\S+)?$")


class SchedulerError(UserError):
    """The scheduler said no, or said something ft cannot read; carries its raw words."""

    def __init__(self, message: str, raw: str = "", hint: str | None = None):
        problems = [message] + ([f"scheduler said: {raw.strip()}"] if raw.strip() else [])
        super().__init__(*problems, hint=hint)
        self.raw = raw


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise UserError(f"{argv[0]} is not on PATH: is this a SLURM login node?")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise SchedulerError(f"{argv[0]} did not answer within {timeout:.0f} s", str(err.stdout or "")) from None


def sbatch(script: Path, extra: list[str] | None = None) -> str:
    """Submit and return the job id (`sbatch --parsable` prints `id[;cluster]`)."""
    argv = ["sbatch", "--parsable", *(extra or []), str(script)]
    result = _run(argv)
    if result.returncode != 0:
        raise SchedulerError("sbatch refused the job", result.stderr or result.stdout)
    last = result.stdout.strip().splitlines()[-1:] or [""]
    match = _JOB_ID.match(last[0].strip())
    if not match:
        raise SchedulerError("could not read a job id from sbatch's answer", result.stdout + result.stderr)
    return match.group(1)


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` output, one job, as a dict of its Key=Value fields."""
    fields: dict[str, str] = {}
    # Values may contain spaces (Command=..., Reason=...); split on ` Key=` boundaries.
    for match in re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|$)", text.strip()):
        fields[match.group(1)] = match.group(2)
    return fields


def job_info(job_id: str) -> dict[str, str] | None:
    """What the controller knows of a job, or None once it has forgotten it."""
    result = _run(["scontrol", "show", "job", "-o", job_id])
    if result.returncode != 0:
        if "Invalid job id" in (result.stderr + result.stdout):
            return None
        raise SchedulerError(f"scontrol could not show job {job_id}", result.stderr or result.stdout)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        return None
    # An array job lists each task; the first line describes the job we asked for.
    fields = parse_scontrol(lines[0])
    if "JobState" not in fields:
        raise SchedulerError(f"could not read scontrol's answer for job {job_id}", result.stdout)
    return fields


def queue_states(user: str | None = None, job_id: str | None = None) -> dict[str, str]:
    """Job id → state for jobs squeue still lists (pending, running, recently ended); each
    task of a job array on its own line (`15_0`, `15_1`: `--array`)."""
    argv = ["squeue", "-h", "--array", "-t", "all", "-o", "%i|%T"]
    if user:
        argv += ["-u", user]
    if job_id:
        argv += ["-j", job_id]
    result = _run(argv)
    if result.returncode != 0:
        raise SchedulerError("squeue failed", result.stderr or result.stdout)
    states = {}
    for line in result.stdout.splitlines():
        if not line.strip():
            continue
        job_id, sep, state = line.strip().partition("|")
        if not sep:
            raise SchedulerError("could not read squeue's answer", result.stdout)
        states[job_id] = state
    return states


def scancel(job_id: str, signal: str | None = None, batch: bool = False) -> None:
    argv = ["scancel"]
    if signal:
        argv.append(f"--signal={signal}")
    if batch:
        argv.append("--batch")
    result = _run([*argv, job_id])
    if result.returncode != 0:
        raise SchedulerError(f"scancel could not cancel job {job_id}", result.stderr or result.stdout)


def requeue(job_id: str) -> None:
    result = _run(["scontrol", "requeue", job_id])
    if result.returncode != 0:
        raise SchedulerError(f"scontrol could not requeue job {job_id}", result.stderr or result.stdout)
