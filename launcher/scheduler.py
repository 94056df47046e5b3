"""The scheduler seam: one small interface that each way of running a job implements.

    from launcher import scheduler
    s = scheduler.get("slurm")          # or "local"; `scheduler.NAMES` lists them
    script = s.render(job, folder)      # the job's script (its header is the scheduler's)
    job_id = s.submit(folder)           # None where the job runs in this process (local)
    s.job_state(job_id); s.queue_states(); s.cancel(view); s.log_files(view)

`jobs.py`, `submit.py` and the CLI ask the scheduler named in a job's record and never test
its name. A new way of running jobs (PBS, Pyxis's `srun --container-image`, a cluster over
SSH) is one new module with a subclass of `Scheduler`, one line in `_REGISTRY`, and its tests.

How a *task* learns its rank is the task launcher's contract, not the submitter's: srun and
torchrun set environment variables that `ftcore.rendezvous.detect` reads (the local
scheduler sets torchrun's), so the trainer never asks which scheduler started it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, ClassVar

from ftcore.errors import UserError
from ftcore import layout

if TYPE_CHECKING:
    from ftcore.schema import Job

# `view` arguments are launcher.jobs.JobView, which imports this module: named, not imported.
JobView = Any

# ft speaks of job states in SLURM's words, whoever ran the job: these end a job.
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
})


class SchedulerError(UserError):
    """The scheduler said no, or said something ft cannot read; carries its raw words."""

    def __init__(self, message: str, raw: str = "", hint: str | None = None):
        problems = [message] + ([f"scheduler said: {raw.strip()}"] if raw.strip() else [])
        super().__init__(*problems, hint=hint)
        self.raw = raw


class SubmissionUnclear(SchedulerError):
    """The submission hung, or said yes in words ft cannot read: the job may exist."""


class Scheduler:
    """One way of running a job folder. Class attributes say what it can do; methods do it.

    The defaults describe a scheduler that knows nothing by id (the job runs here)."""

    name: ClassVar[str]
    # Which queue lists its jobs (one listing serves every scheduler that shares it).
    queue: ClassVar[str] = ""
    # The scheduler knows its jobs by an id that it hands back at submission (states, cancel).
    by_id: ClassVar[bool] = False
    # A sweep runs as one array job, each task in tasks/<i>/.
    arrays: ClassVar[bool] = False
    # The job runs in the submitting process (the CLI follows it); submit() starts nothing.
    runs_here: ClassVar[bool] = False
    # The script puts the job back in the queue itself on preemption (exit code exits.REQUEUE
    # is then followed by a requeue, not by the end of the job).
    requeues_itself: ClassVar[bool] = False
    # ft wrote the script and started the job (so `ft resubmit` can do it again); False for
    # `ft train` run by the user's own script, srun or torchrun.
    ft_script: ClassVar[bool] = True

    def preflight(self, job: "Job", dry_run: bool) -> list[str]:
        """What this machine lacks to run the job this way (nothing under --dry-run)."""
        return []

    def render(self, job: "Job", folder: Path, array_size: int = 0, dependency: str | None = None,
               command: list[str] | None = None) -> str:
        """The job's script, as written into its folder; `command` (after the job's Python) runs
        instead of the trainer: a short job after training (render.render_sbatch)."""
        raise NotImplementedError

    def submit(self, folder: Path) -> str | None:
        """Hand the folder's script over; the scheduler's job id (None: nothing to hand over)."""
        return None

    def time_limit(self, job: "Job") -> str:
        return "none (local)"

    def is_job_id(self, text: object) -> bool:
        return False

    def job_state(self, job_id: str) -> str | None:
        """The scheduler's word on one job (or array task); None once it has forgotten the job.
        Raises UserError when the scheduler cannot be asked from here."""
        return None

    def queue_states(self, job_id: str | None = None) -> dict[str, str]:
        """Job id → state of the jobs it still lists (one job's tasks with `job_id`)."""
        return {}

    def processes_alive(self, view: "JobView") -> bool | None:
        """Whether the job's processes still run here; None when this scheduler cannot tell."""
        return None

    def running_elsewhere(self, view: "JobView") -> str | None:
        """The host whose processes run the job, when it is not this one (None: here, or unknown)."""
        return None

    def cancel(self, view: "JobView") -> None:
        raise UserError(f"job {view.label} cannot be cancelled by ft ({self.name})")

    def requeue(self, job_id: str) -> None:
        raise UserError(f"{self.name} jobs cannot be requeued")

    def log_files(self, view: "JobView") -> list[PurePath]:
        """The job's logs in the order they were written: one file per task process."""
        return view.files.glob(f"{layout.LOGS}/{layout.RANK_LOGS}")

    def rank_lines(self, path: PurePath, lines: list[str], rank: int | None) -> list[str]:
        """The lines of log `path` that task `rank` wrote (every line with no rank)."""
        if rank is None:
            return lines
        return lines if path.name == layout.rank_log(rank) else []


# name → "module:Class": a scheduler's module is imported only when a job names it.
_REGISTRY = {
    "slurm": "launcher.slurm:Slurm",
    "local": "launcher.local:Local",
}
NAMES = tuple(_REGISTRY)
# What started the processes of an `ft train` folder, as its record names it: ft wrote no
# script there, but SLURM still knows an srun job by id.
_STARTED_BY = {
    "srun": "launcher.slurm:SrunTrain",
    "torchrun": "launcher.scheduler:Torchrun",
}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Torchrun(Scheduler):
    """`ft train` under torchrun: no scheduler knows the job; each task writes its own log."""

    name = "torchrun"
    ft_script = False


def register(name: str, target: str) -> None:
    """Add a scheduler (`"pbs", "ft_pbs.scheduler:Pbs"`) from a site's plugin."""
    global NAMES
    if not _NAME.match(name):
        raise ValueError(f"scheduler name {name!r}: lower-case letters, digits, - and _")
    _REGISTRY[name] = target
    NAMES = tuple(_REGISTRY)


def _load(target: str) -> Scheduler:
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()


def get(name: str) -> Scheduler:
    """The scheduler called `name` (`--executor`), or a UserError listing the valid names."""
    target = _REGISTRY.get(name)
    if target is None:
        raise UserError(f"unknown executor {name!r}: choose {' or '.join(NAMES)}")
    return _load(target)


def for_record(executor: object) -> Scheduler | None:
    """What ran a job whose record names `executor`; None for a dry run (or a name no
    scheduler owns, which reads as one)."""
    target = _REGISTRY.get(executor) or _STARTED_BY.get(executor) if isinstance(executor, str) else None
    return _load(target) if target else None


def record_names() -> tuple[str, ...]:
    return (*_REGISTRY, *_STARTED_BY)


def is_job_id(text: object) -> bool:
    """Any registered scheduler's id (`15`, `15_3`)."""
    return any(_load(target).is_job_id(text) for target in _REGISTRY.values())
