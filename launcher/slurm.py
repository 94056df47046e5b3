"""SLURM on this host: the `slurm` scheduler (launcher.scheduler), and the one place every
sbatch, squeue, scontrol and scancel call goes through.

Output that cannot be read raises a SchedulerError carrying the raw text.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from functools import cached_property
from pathlib import Path
from typing import Mapping

from ftcore import rendezvous
from ftcore.errors import UserError
from ftcore.layout import LOGS, SCRIPT
from launcher.scheduler import TERMINAL_STATES, SchedulerError, Scheduler, SubmissionUnclear, oldest_first  # noqa: F401
_JOB_ID = re.compile(r"^(\d+)(?:;\S+)?$")  # what `sbatch --parsable` prints
_JOB_ID_TEXT = re.compile(r"^\d+(?:_\d+)?$")  # a job id (or one array task) as ft records it


def is_job_id(text: object) -> bool:
    return isinstance(text, str) and bool(_JOB_ID_TEXT.match(text))


class _Timeout(Exception):
    def __init__(self, output: str):
        self.output = output


# How long a scheduler command may take. sbatch waits for the controller, which can be slow
# under load; waiting longer is better than guessing.
TIMEOUT_S = 60.0
SBATCH_TIMEOUT_S = 120.0


def _run(argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run a scheduler command; on a timeout its whole process group is killed (a wrapper
    script's children too, which would otherwise hold the pipes open)."""
    timeout = TIMEOUT_S if timeout is None else timeout
    if shutil.which(argv[0]) is None:
        raise UserError(f"{argv[0]} is not on PATH: is this a SLURM login node?")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise _Timeout((out or "") + (err or "")) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _run_or_fail(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return _run(argv)
    except _Timeout as timeout:
        raise SchedulerError(f"{argv[0]} did not answer within {TIMEOUT_S:.0f} s", timeout.output) from None


# ASCII digits, seven at most (115 days): a longer number, or Unicode digits, is an odd answer.
_KILL_WAIT = re.compile(r"^KillWait\s*=\s*([0-9]{1,7})\s*sec", re.MULTILINE | re.ASCII)


def kill_wait_s() -> int | None:
    """The cluster's KillWait (`scontrol show config`): how long a job has between SIGTERM and
    SIGKILL. None when scontrol is missing, slow or says something else: a note is not worth
    failing a submission over, nor waiting long for."""
    try:
        result = _run(["scontrol", "show", "config"], timeout=min(TIMEOUT_S, 10.0))
    except (_Timeout, UserError):
        return None
    found = _KILL_WAIT.search(result.stdout) if result.returncode == 0 else None
    return int(found.group(1)) if found else None


def sbatch(script: Path, extra: list[str] | None = None) -> str:
    """Submit and return the job id (`sbatch --parsable` prints `id[;cluster]`).

    A refusal (non-zero exit) raises SchedulerError: no job exists. A hang, or a zero exit
    whose answer holds no job id, raises SubmissionUnclear: a job may exist."""
    argv = ["sbatch", "--parsable", *(extra or []), str(script)]
    try:
        result = _run(argv, timeout=SBATCH_TIMEOUT_S)
    except _Timeout as timeout:
        raise SubmissionUnclear(f"sbatch did not answer within {SBATCH_TIMEOUT_S:.0f} s", timeout.output) from None
    if result.returncode != 0:
        raise SchedulerError("sbatch refused the job", result.stderr or result.stdout)
    last = result.stdout.strip().splitlines()[-1:] or [""]
    match = _JOB_ID.match(last[0].strip())
    if not match:
        raise SubmissionUnclear("sbatch said yes but its answer holds no job id", result.stdout + result.stderr)
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
    result = _run_or_fail(["scontrol", "show", "job", "-o", job_id])
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


def describe_state(info: dict[str, str]) -> str:
    """The job's state as a person reads it; a pending job with SLURM's reason and its
    estimated start (squeue's %r and %S): `PENDING (Dependency)`,
    `PENDING (Resources; estimated start 2026-12-02T19:00:00)`."""
    state = info.get("JobState") or "UNKNOWN"
    if state != "PENDING":
        return state
    reason = info.get("Reason") or ""
    start = info.get("StartTime") or ""
    parts = [reason] if reason and reason != "None" else []
    if start and start not in ("Unknown", "None", "N/A"):
        parts.append(f"estimated start {start}")
    return f"PENDING ({'; '.join(parts)})" if parts else "PENDING"


def queue_states(user: str | None = None, job_id: str | None = None) -> dict[str, str]:
    """Job id → state for jobs squeue still lists (pending, running, recently ended); each
    task of a job array on its own line (`15_0`, `15_1`: `--array`)."""
    argv = ["squeue", "-h", "--array", "-t", "all", "-o", "%i|%T"]
    if user:
        argv += ["-u", user]
    if job_id:
        argv += ["-j", job_id]
    result = _run_or_fail(argv)
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
    result = _run_or_fail([*argv, job_id])
    if result.returncode != 0:
        raise SchedulerError(f"scancel could not cancel job {job_id}", result.stderr or result.stdout)


def requeue(job_id: str) -> None:
    result = _run_or_fail(["scontrol", "requeue", job_id])
    if result.returncode != 0:
        raise SchedulerError(f"scontrol could not requeue job {job_id}", result.stderr or result.stdout)


class Slurm(Scheduler):
    """sbatch on this login node: ft's script (templates/), a sweep as a job array, srun
    --label logs (`N: ` before each task's line) in slurm-<id>.out."""

    name = "slurm"
    queue = "slurm"
    by_id = True
    arrays = True
    requeues_itself = True
    submit_command = "sbatch"
    task_command = "srun"

    def preflight(self, job, dry_run: bool) -> list[str]:
        if not dry_run and shutil.which("sbatch") is None:
            return ["sbatch is not on PATH: run ft on a SLURM login node, or use --dry-run to "
                    "write and print the script, or --executor local to run here"]
        return []

    @cached_property
    def kill_wait_s(self) -> int | None:
        """The cluster's KillWait, asked once per use of this scheduler (a sweep renders a script per task)."""
        return kill_wait_s()

    def render(self, job, folder: Path, array_size: int = 0, dependency: str | None = None,
               command: list[str] | None = None) -> str:
        from launcher import render

        return render.render_sbatch(job, folder, array_size=array_size, dependency=dependency,
                                    kill_wait_s=self.kill_wait_s, command=command)

    def submit(self, folder: Path) -> str:
        return sbatch(folder / SCRIPT)

    def time_limit(self, job) -> str:
        from launcher.render import plan_default_time

        return job.slurm.time if job.slurm.time != "auto" else plan_default_time()

    def lost_job_hint(self, job_name: str | None = None) -> str:
        name = f" --name={job_name}" if job_name else ""
        return f"`squeue --me{name}` (or `sacct{name or ' -u $USER'}`)"

    def is_job_id(self, text: object) -> bool:
        return is_job_id(text)

    def job_state(self, job_id: str) -> str | None:
        info = job_info(job_id)
        return None if info is None else describe_state(info)  # PENDING with SLURM's reason and estimated start

    def queue_states(self, job_id: str | None = None) -> dict[str, str]:
        return queue_states(job_id=job_id)

    def cancel(self, view) -> None:
        scancel(view.label)

    def requeue(self, job_id: str) -> None:
        requeue(job_id)

    def log_files(self, view) -> list[Path]:
        # A sweep's tasks log to slurm-<job>_<task>.out (every submission of the folder).
        pattern = "slurm-*.out" if view.task is None else f"slurm-*_{view.task}.out"
        return oldest_first(view.folder.glob(f"{LOGS}/{pattern}"))

    def rank_lines(self, path: Path, lines: list[str], rank: int | None) -> list[str]:
        """srun --label prefixes each task's line with `N: ` (space-padded)."""
        if rank is None:
            return lines
        prefix = f"{rank}: "
        return [line.lstrip()[len(prefix):] for line in lines if line.lstrip().startswith(prefix)]


class SrunTrain(Slurm):
    """`ft train` under srun in a workshop's own batch script: SLURM knows the job by id, but
    the script is the user's: each task writes its own log (rank-N.out), and nothing
    requeues the job for ft."""

    name = "srun"
    arrays = False
    requeues_itself = False
    ft_script = False
    log_files = Scheduler.log_files
    rank_lines = Scheduler.rank_lines

    def started_task(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("SLURM_JOB_ID"))

    def task_job_id(self, env: Mapping[str, str]) -> str | None:
        return rendezvous.job_id(env)  # digits only: it names a folder under $FT_HOME/jobs

    def task_submit_dir(self, env: Mapping[str, str]) -> str | None:
        return env.get("SLURM_SUBMIT_DIR")

    def task_folder_name(self, job_name: str, env: Mapping[str, str]) -> str:
        from launcher import jobdir

        step = jobdir.safe_name(env.get("SLURM_STEP_ID") or "batch")
        return f"slurm-{self.task_job_id(env)}.{step}-{jobdir.safe_name(job_name)}"

    def task_problems(self, job, procs, env: Mapping[str, str]) -> list[str]:
        # `ft train` in the batch script itself (no srun step, no torchrun): one process.
        if "SLURM_STEP_ID" not in env and procs.launcher != "torchrun":
            if max(procs.world_size, job.world_size) > 1:
                return [f"ft train runs in the batch script itself, as one process, but the job wants "
                        f"{job.world_size} (trainer.num_nodes × trainer.devices): start it with srun "
                        "(`srun ft train ...`), one task per GPU"]
            return []
        return super().task_problems(job, procs, env)

    def resubmit_advice(self, view, resumes: str) -> list[str]:
        submitted_from = view.record.get("submit_dir")
        script = f"your batch script (submitted from {submitted_from})" if submitted_from else "your batch script"
        return [f"job {view.job_id} ran `ft train` from {script}; ft did not write that script, so it cannot "
                "submit it again. Either:",
                f"  scontrol requeue {view.job_id}   (while SLURM still knows the job: same job id, same folder; "
                f"{resumes})",
                f"  or add --job-dir {view.folder} to the ft train line of the script and submit it with sbatch "
                f"({resumes})"]
