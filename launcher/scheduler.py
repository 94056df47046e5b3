"""The scheduler seam: one small interface that each way of running a job implements.

    from launcher import scheduler
    runner = scheduler.get("slurm")          # or "local"; `scheduler.NAMES` lists them
    script = runner.render(job, folder)      # the job's script (its header is the scheduler's)
    job_id = runner.submit(folder)           # None where the job runs here: then runner.run(job, folder)
    runner.job_state(job_id); runner.queue_states(); runner.cancel(view); runner.log_files(view)

`jobs.py`, `submit.py`, `train.py` and the CLI ask the scheduler named in a job's record and never
test its name (tests/ftcore/test_architecture.py holds them to it). A task learns its rank from
its task launcher's variables (`ftcore.rendezvous.detect`), never from the scheduler.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

from ftcore.errors import UserError
from ftcore import layout

if TYPE_CHECKING:
    from ftcore.rendezvous import DistEnv
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
    # What hands a job over, as messages name it ("while sbatch was answering").
    submit_command: ClassVar[str] = "the scheduler"
    # The command that starts one task per GPU in a batch script of the user's (`srun ft train`):
    # `ft submit --dry-run --print-srun` prints that line; None where there is no such command.
    task_command: ClassVar[str | None] = None

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

    def run(self, job: "Job", folder: Path, detach: bool = False, history: list | None = None) -> int:
        """Run a submitted folder's job here (`runs_here`): follow it to its end and return its
        exit status, or leave it running in the background (`detach`) and return 0. `history`:
        the folder's earlier submissions, kept in its record."""
        raise UserError(f"{self.name} jobs do not run in ft's own process: they are handed over by submit")

    def time_limit(self, job: "Job") -> str:
        """The job's wall-clock limit, as the submission summary shows it."""
        return "the scheduler's default"

    def lost_job_hint(self, job_name: str | None = None) -> str:
        """How to look for a job whose submission answer was lost (it may exist)."""
        return f"{self.name}'s own listing of your jobs"

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

    def resubmit_advice(self, view: "JobView", resumes: str) -> list[str]:
        """What to do instead of `ft resubmit` for a job ft did not write the script of (`ft_script`
        False); `resumes` says where the run would continue from."""
        return [f"{view.folder} was trained by `ft train` under {self.name}, not submitted by ft: run the same "
                f"command again with --job-dir {view.folder}; {resumes}"]

    # --- `ft train`: the scheduler (or task launcher) that started this process --------------

    def started_task(self, env: Mapping[str, str]) -> bool:
        """Whether `env` says this launcher started the current process (`ft train`)."""
        return False

    def task_job_id(self, env: Mapping[str, str]) -> str | None:
        """The id this launcher knows the current process's job by (None: none)."""
        return None

    def task_submit_dir(self, env: Mapping[str, str]) -> str | None:
        """Where the user's own script was submitted from (`ft resubmit`'s advice names it)."""
        return None

    def task_folder_name(self, job_name: str, env: Mapping[str, str]) -> str:
        """The job folder name that every task of one `ft train` run computes alike (and a
        restarted run computes again, to resume there)."""
        from launcher import jobdir

        return jobdir.new_name(job_name)

    def task_problems(self, job: "Job", procs: "DistEnv", env: Mapping[str, str]) -> list[str]:
        """What differs between the job's layout and the processes this launcher started."""
        from ftcore import rendezvous

        return rendezvous.allocation_problems(job.trainer.num_nodes, job.trainer.devices, procs, env)

    def log_files(self, view: "JobView") -> list[Path]:
        """The job's logs in the order they were written: one file per task process."""
        return sorted(view.folder.glob(f"{layout.LOGS}/{layout.RANK_LOGS}"))

    def rank_lines(self, path: Path, lines: list[str], rank: int | None) -> list[str]:
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
DEFAULT = NAMES[0]  # what `--executor` means when it is not given
# What started the processes of an `ft train` folder, as its record names it: ft wrote no
# script there, but SLURM still knows an srun job by id. `task_launcher` asks them in this
# order; a process that none of them started runs alone, and its record says `local`.
_STARTED_BY = {
    "srun": "launcher.slurm:SrunTrain",
    "torchrun": "launcher.scheduler:Torchrun",
}
_ALONE = "local"
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Torchrun(Scheduler):
    """`ft train` under torchrun: no scheduler knows the job; each task writes its own log."""

    name = "torchrun"
    ft_script = False

    def started_task(self, env: Mapping[str, str]) -> bool:
        return "TORCHELASTIC_RUN_ID" in env

    def task_folder_name(self, job_name: str, env: Mapping[str, str]) -> str:
        from launcher import jobdir

        run_id = env["TORCHELASTIC_RUN_ID"]
        if run_id in ("", "none"):
            raise UserError("under torchrun without --standalone or --rdzv-id the processes share no run id "
                            "to name their job folder by: add --standalone (one machine) or --rdzv-id ID, "
                            "or give the folder: ft train --job-dir DIR")
        return f"torchrun-{jobdir.safe_name(run_id)}-{jobdir.safe_name(job_name)}"


def register(name: str, target: str) -> None:
    """Add a scheduler (`"pbs", "ft_pbs.scheduler:Pbs"`) from a site's plugin."""
    global NAMES
    if not _NAME.match(name):
        raise ValueError(f"scheduler name {name!r}: lower-case letters, digits, - and _")
    _REGISTRY[name] = target
    NAMES = tuple(_REGISTRY)


def oldest_first(paths: Iterable[Path]) -> list[Path]:
    """`paths` by modification time (one that vanished meanwhile first), then by name."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0

    return sorted(sorted(paths), key=mtime)


def names_that(can: Callable[[Scheduler], bool]) -> str:
    """The registered schedulers that `can` (`lambda runner: runner.arrays`), as a message lists them."""
    return " or ".join(name for name in NAMES if can(get(name)))


def _load(target: str) -> Scheduler:
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()


def here() -> str:
    """The registered scheduler that runs a job on this machine (`--executor` for "here")."""
    return next(name for name in NAMES if get(name).runs_here)


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


def task_launcher(env: Mapping[str, str]) -> Scheduler:
    """What started this `ft train` process, as its record will name it: srun, torchrun, or
    nothing (`local`: a process alone)."""
    for target in _STARTED_BY.values():
        launcher = _load(target)
        if launcher.started_task(env):
            return launcher
    return get(_ALONE)


def is_job_id(text: object) -> bool:
    """Any registered scheduler's id (`15`, `15_3`)."""
    return any(_load(target).is_job_id(text) for target in _REGISTRY.values())
