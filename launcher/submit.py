"""Resolve → validate → write the job folder → submit. Library functions the CLI calls.

Nothing here asks questions or prints: the CLI does that. A job folder is written only
after every check passed, and removed again if the scheduler refuses the job.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from launcher import jobdir, render, slurm
from launcher.config import Resolved, job_to_dict, resolve
from launcher.errors import SchedulerError, UserError

EXECUTORS = ("slurm", "local")


@dataclass(frozen=True)
class Plan:
    resolved: Resolved
    executor: str
    script_preview: str  # rendered with a placeholder folder, for --dry-run without writing twice

    @property
    def job(self):
        return self.resolved.job


def plan(factory: str, overrides: list[str], profile: str | None = None,
         executor: str = "slurm", dry_run: bool = False) -> Plan:
    """Everything short of writing: resolution, validation, pre-flight checks, rendering."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}: choose {' or '.join(EXECUTORS)}")
    resolved = resolve(factory, overrides, profile)
    job = resolved.job
    problems = render.preflight(job, need_sbatch=executor == "slurm" and not dry_run)
    if executor == "local" and job.container.runtime != "none" and shutil.which(job.container.runtime) is None:
        problems.append(f"{job.container.runtime} is not on PATH here: run with container.runtime=none "
                        "to use this machine's Python")
    if problems:
        raise UserError(*problems)
    preview = render.render_sbatch(job, Path("/JOB_DIR"))  # template errors surface before writing
    return Plan(resolved, executor, preview)


def summary(p: Plan) -> list[tuple[str, str]]:
    job = p.job
    t = job.trainer
    unit = "GPU" if t.accelerator == "gpu" else "task"
    image = job.container.image if job.container.runtime != "none" else "none (host Python)"
    return [
        ("factory", f"{job.name} ({p.resolved.factory_path})"),
        ("method", "LoRA" if job.peft else "full SFT"),
        ("model", str(job.model.path or f"random init ({job.model.config.get('model_type', '?')})")),
        ("resources", f"{t.num_nodes} node(s) × {t.devices} {unit}(s) = {job.world_size} {unit}(s)"),
        ("batch", f"global {job.data.global_batch_size} = micro {job.data.micro_batch_size} × "
                  f"accumulation {job.grad_accum_steps} × data-parallel {job.world_size}"),
        ("steps", str(t.max_steps) if t.max_steps else f"{t.num_epochs} epoch(s)"),
        ("container", f"{job.container.runtime}: {image}"),
        ("time limit", job.slurm.time if p.executor == "slurm" else "none (local)"),
        ("partition", job.slurm.partition or "(cluster default)"),
        ("profile", str(p.resolved.profile_path or "none")),
    ]


def write(p: Plan, argv: list[str] | None = None, root: Path | None = None) -> Path:
    """The complete job folder: resolved config, script, exact command line."""
    job = p.job
    config = jobdir.config_text(job_to_dict(job))
    command = jobdir.command_line(argv)
    return jobdir.create(
        job.name,
        lambda folder: {
            jobdir.CONFIG: config,
            jobdir.SCRIPT: render.render_sbatch(job, folder),
            jobdir.COMMAND: command,
        },
        root,
    )


def submit(folder: Path, factory: str) -> str:
    """sbatch the folder's script; on refusal the folder is removed so nothing half-done stays."""
    try:
        job_id = slurm.sbatch(folder / jobdir.SCRIPT)
    except SchedulerError as err:
        shutil.rmtree(folder, ignore_errors=True)
        err.problems.append(f"nothing was submitted; the job folder {folder} was removed")
        raise
    jobdir.write_record(folder, executor="slurm", job_id=job_id, factory=factory, folder=str(folder))
    return job_id
