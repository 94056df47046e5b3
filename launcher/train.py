"""`ft train`: train in this process, under a script ft did not write (a workshop's srun line).

    srun ft train --factory llama31_8b --yes trainer.devices="${SLURM_GPUS_PER_NODE}" trainer.max_steps=250
    srun singularity exec --nv --bind FT:/opt/ft --env PYTHONPATH=/opt/ft IMAGE \\
        python -m launcher train --factory llama31_8b ...      # an image without ft installed
    torchrun --standalone --nproc-per-node 2 -m launcher train --factory tiny trainer.devices=2
    ft train --factory tiny                                      # one process, no scheduler

The job is resolved and validated exactly as `ft submit` resolves it. Then every task agrees
on one job folder, named from SLURM's job id, array task and step (so a requeued job finds
its folder again and resumes from its checkpoint); task 0 writes it whole, the others wait
for it; and each task replaces itself with the trainer (`exec`, same process: srun's
signals reach the trainer). This module imports nothing outside the image contract (no
typer, rich or jinja2), so it runs from ft's code bound into any image.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ftcore import layout, rendezvous
from ftcore.errors import UserError
from ftcore.rendezvous import DistEnv
from ftcore.schema import Job, job_to_dict
from launcher import config, jobdir, paths, scheduler, stage

# How long tasks other than 0 wait for task 0 to write the job folder (a shared filesystem
# may show a new folder on other nodes only after its attribute cache expires).
WAIT_S = 300.0


class _ThisTaskOnly(UserError):
    """A problem only this task has (the others may be fine): every task that has it reports it."""


@dataclass(frozen=True)
class Plan:
    job: Job
    folder: Path
    procs: DistEnv
    executor: str  # what started the processes, as the record names it (scheduler.task_launcher)
    job_id: str | None
    explicit_folder: bool  # --job-dir: continue there on purpose, even with changed settings
    submit_dir: str | None = None  # where the batch script was submitted from (for `ft resubmit`'s advice)


def main(argv: list[str] | None = None) -> int:
    """`ft train ...` and `python -m launcher train ...`: hand over to the trainer, or return 2."""
    parser = argparse.ArgumentParser(
        prog="ft train", allow_abbrev=False,
        description="Train in this process: one task of srun or torchrun, or alone.",
        epilog="Overrides: KEY=VALUE in dot notation after the options, as for ft submit, e.g. "
               "trainer.max_steps=250 optim.lr=1e-4 trainer.devices=\"${SLURM_GPUS_PER_NODE}\".")
    parser.add_argument("--factory", "-f", required=True, help="factory name (see `ft factories`) or YAML path")
    parser.add_argument("--profile", help="cluster profile YAML (default: $FT_PROFILE or ~/.config/ft/cluster.yaml)")
    parser.add_argument("--job-dir", help="use this job folder (continue in it) instead of one named from SLURM's ids")
    parser.add_argument("--yes", "-y", action="store_true", help="accepted as the workshop writes it; ft train never asks")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    command = jobdir.command_line(["ft", "train", *(sys.argv[1:] if argv is None else argv)])
    procs = DistEnv()
    try:
        procs = rendezvous.detect(os.environ)
        plan = prepare(args.factory, overrides, args.profile, args.job_dir)
        agree_on_folder(plan, command)
    except UserError as err:
        # Every task resolved the same job and found the same problems: task 0 says it once.
        if procs.is_main or isinstance(err, _ThisTaskOnly):
            for problem in err.problems:
                print(f"ft: error: {problem}", file=sys.stderr)
            if err.hint:
                print(f"ft: hint: {err.hint}", file=sys.stderr)
        return err.exit_code
    hand_over(plan)
    return 0  # not reached: hand_over replaces this process


def prepare(factory: str, overrides: list[str], profile: str | None = None, job_dir: str | None = None,
            environ: Mapping[str, str] | None = None) -> Plan:
    """Resolve and validate the job as `ft submit` does, check it against the processes that
    were started, and name its folder. Writes nothing."""
    env = os.environ if environ is None else environ
    job = config.resolve(factory, overrides, profile).job
    try:  # activation checkpointing `auto`: on where the plan says the job needs it, as `ft submit` decides
        from launcher import plan as memory_plan

        job, _ = memory_plan.settle(job)
    except UserError:
        pass  # a model the plan cannot size: `auto` trains without it
    procs = rendezvous.detect(env)
    launcher = scheduler.task_launcher(env)
    problems = job.missing_paths() + launcher.task_problems(job, procs, env)
    if problems:
        raise UserError(*problems)
    folder, executor, job_id = folder_for(job, env, job_dir)
    return Plan(job, folder, procs, executor, job_id, job_dir is not None, launcher.task_submit_dir(env))


def folder_for(job: Job, env: Mapping[str, str], job_dir: str | None = None) -> tuple[Path, str, str | None]:
    """(job folder, executor, job id): what started this process names the folder, so every
    task of one run computes the same one, and a requeued SLURM job (same id) or a restarted
    torchrun (same run id) the same again."""
    launcher = scheduler.task_launcher(env)
    job_id = launcher.task_job_id(env)
    if job_dir:
        return Path(job_dir).expanduser().absolute(), launcher.name, job_id
    return paths.jobs_root() / launcher.task_folder_name(job.name, env), launcher.name, job_id


def agree_on_folder(plan: Plan, command: str, wait_s: float = WAIT_S) -> None:
    """Task 0 writes the job folder whole (or finds it from an earlier run of this job);
    the others wait until it holds this job's config."""
    wanted = job_to_dict(plan.job)
    if not plan.explicit_folder:
        _refuse_other_settings(plan, wanted)
    if plan.procs.is_main:
        _write(plan, wanted, command)
        return
    deadline = time.monotonic() + wait_s
    while _config_in(plan.folder) != wanted:
        if time.monotonic() > deadline:
            raise _ThisTaskOnly(
                f"task {plan.procs.rank} waited {wait_s:g} s for task 0 to write the job folder {plan.folder}: "
                "task 0 failed (its error is above) or this node does not see the folder",
                hint="every task must see the same $FT_HOME (default ~/ft), on a shared filesystem")
        time.sleep(0.2)


def _config_in(folder: Path) -> dict[str, Any] | None:
    try:
        return yaml.safe_load((folder / layout.CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None


def _refuse_other_settings(plan: Plan, wanted: dict[str, Any]) -> None:
    """A folder named after this run that holds another job's settings: resuming from its
    checkpoints would mix two jobs."""
    found = _config_in(plan.folder)
    if found is None or found == wanted:
        return
    changed = [f"{key}: {old!r} → {new!r}" for key, old, new in _differences(found, wanted)]
    raise UserError(
        f"{plan.folder} holds an earlier run of this job with other settings ({'; '.join(changed[:5])}): "
        "it would resume from that run's checkpoints",
        hint=f"continue it with these settings on purpose: ft train --job-dir {plan.folder} ...; "
             "or start afresh in another folder: --job-dir NEW_FOLDER")


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _write(plan: Plan, wanted: dict[str, Any], command: str) -> None:
    record = {"executor": plan.executor, "job_id": plan.job_id, "factory": plan.job.name, "folder": str(plan.folder),
              "submit_dir": plan.submit_dir, "pids": [os.getpid()]}
    files = {layout.CONFIG: jobdir.config_text(wanted), layout.COMMAND: command, layout.RECORD: jobdir.record_text(**record)}
    created = jobdir.create_at(plan.folder, lambda final: files)
    # The folder exists: this job was requeued, or --job-dir names an earlier run's folder
    # (checked before anything, the lock included, is written into it).
    earlier = {} if created else _earlier_run(plan)
    # One run at a time in a folder: the lock is held until the trainer (this process, after
    # exec) exits, so a second `ft train --job-dir` of the same folder is refused, not mixed in.
    jobdir.hold_run_lock(plan.folder, plan.job_id)
    if created:
        return
    history = list(earlier.get("history", []))
    if earlier.get("job_id") and earlier.get("job_id") != plan.job_id:
        history.append({k: earlier.get(k) for k in ("job_id", "time")})
    found = _config_in(plan.folder)
    if found != wanted:
        if found is not None:  # (none: an empty folder given with --job-dir)
            changed = [f"{key}: {old!r} → {new!r}" for key, old, new in _differences(found, wanted)]
            print(f"ft train: continuing {plan.folder} with changed settings: {'; '.join(changed[:8])}",
                  file=sys.stderr, flush=True)
        jobdir.write_atomic(plan.folder / layout.CONFIG, files[layout.CONFIG])
    commands = _text(plan.folder / layout.COMMAND)
    if not commands.endswith(command):  # every run's command line, as `ft resubmit` keeps them
        jobdir.write_atomic(plan.folder / layout.COMMAND, commands + command)
    (plan.folder / layout.LOGS).mkdir(exist_ok=True)
    jobdir.write_record(plan.folder, **record, history=history)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _earlier_run(plan: Plan) -> dict[str, Any]:
    """The record of the folder's earlier run, when it is one this run may continue: the same
    job requeued, or (--job-dir) a folder `ft train` made for a job of the same factory. Any
    other folder is refused, naming whose it is: its checkpoints are not this job's."""
    folder = plan.folder
    try:
        earlier = jobdir.read_record(folder)
    except ValueError as err:
        raise UserError(f"{folder} holds a damaged record ({err}): ft cannot tell whose job folder it is",
                        hint="give a new folder with --job-dir, or move that one aside") from None
    config = _config_in(folder)
    if not earlier and config is None:
        if any(p.name not in (layout.LOGS, jobdir.LOCK, jobdir.RUN_LOCK) for p in folder.iterdir()):
            raise UserError(f"{folder} is not empty and not a job folder: ft train does not write into other files",
                            hint="give a new or empty folder with --job-dir")
        return {}
    owner = earlier.get("job_id") or folder.name
    factory = earlier.get("factory") or (config or {}).get("name") or "?"
    # ft train's own folders: started by srun/torchrun (no ft script) or run here; a folder
    # with ft's script in it is a submitted job's.
    runner = scheduler.for_record(earlier.get("executor"))
    if runner is None or not (runner.runs_here or not runner.ft_script) or (folder / layout.SCRIPT).exists():
        raise UserError(f"{folder} belongs to job {owner} ({factory}), which `ft submit` made: `ft train` "
                        "cannot continue it", hint=f"continue it with `ft resubmit {folder}`, or give "
                                                   "`ft train` a new folder with --job-dir")
    if factory != plan.job.name:
        raise UserError(f"{folder} belongs to job {owner} of factory {factory}, not {plan.job.name}: its "
                        "checkpoints are not this job's", hint="give a new folder with --job-dir")
    return earlier


def trainer_argv(plan: Plan) -> list[str]:
    """The trainer, with its own records: no ft script around it writes events or logs."""
    log = plan.folder / layout.LOGS / layout.rank_log(plan.procs.rank)
    return [sys.executable, "-m", "trainer", "--config", str(plan.folder / layout.CONFIG),
            "--events", "--copy-output", str(log)]


def hand_over(plan: Plan) -> None:
    """Become the trainer: same process id, so srun's and torchrun's signals reach it."""
    if plan.procs.is_main:
        print(f"Job folder: {plan.folder}", flush=True)
    sys.stderr.flush()
    # The trainer is this package's sibling: the same interpreter, path and folder find it.
    env = dict(os.environ, PYTHONUNBUFFERED="1", **stage.environment(plan.job))
    argv = trainer_argv(plan)
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    sys.exit(main())
