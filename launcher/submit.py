"""Resolve → validate → write the job folder → submit. Library functions the CLI calls.

Nothing here asks questions or prints: the CLI does that. A job folder is written only
after every check passed, and removed again if the scheduler refuses the job. When sbatch's
answer is lost (a hang, or words ft cannot read) the job may exist: the folder is kept and
its record says what sbatch said. A resubmit that the scheduler refuses leaves the folder as
it was; submit and resubmit hold the folder's lock, so two of them never interleave.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore import contract, layout, secrets
from ftcore.errors import UserError
from ftcore.files import write_atomic
from ftcore.schema import job_to_dict
from launcher import jobdir, paths, render, runtime, scheduler, sharedcache, stage as staging
from launcher.config import Resolved, differing, resolve
from launcher.scheduler import SchedulerError, SubmissionUnclear


@dataclass(frozen=True)
class Prepared:
    resolved: Resolved
    executor: str
    tasks: tuple[Resolved, ...] = ()  # a sweep: one resolved job per array task
    after: str | None = None  # job id this one waits for (afterok)
    warnings: tuple[str, ...] = ()  # what a real submission would refuse (under --dry-run), and the plan's guesses
    staged: tuple[staging.Staged, ...] = ()  # what --stage downloaded
    notes: tuple[str, ...] = ()  # under --dry-run: what a real submission would do first
    dry_run: bool = False

    @property
    def job(self):
        return self.resolved.job


def split_values(text: str) -> list[str]:
    """`1e-4,3e-4` or `[q,v],[q,k,v]`: commas inside brackets or quotes do not split."""
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return [*values, current]


def sweep_overrides(sweeps: list[str]) -> list[list[str]]:
    """`--sweep a=1,2 --sweep b=x,y` → the override lists of every combination."""
    import itertools

    axes = []
    for sweep in sweeps:
        key, eq, values = sweep.partition("=")
        if not eq or not values:
            raise UserError(f"--sweep {sweep!r}: write key=v1,v2,... e.g. --sweep optim.lr=1e-4,3e-4")
        axes.append([f"{key}={value}" for value in split_values(values)])
    return [list(combo) for combo in itertools.product(*axes)]


def prepare(factory: str, overrides: list[str], profile: str | None = None,
            executor: str = scheduler.DEFAULT, dry_run: bool = False, sweeps: list[str] | None = None,
            after: str | None = None, stage: bool = False, force: bool = False,
            elsewhere: bool = False) -> Prepared:
    """Everything short of writing: resolution, validation, pre-flight checks, rendering.

    `after` names a job (id, folder or prefix) this one waits for (afterok). `stage`
    downloads the job's hub model and dataset into the shared cache first, and the job then
    runs offline (hub.offline) from that cache. `force` submits a job the plan says will not
    fit its GPUs (a plan is an estimate); never one it knows cannot start (LoRA globs that
    match no layer).

    `elsewhere`: the job runs on another machine (`--cluster`): everything that can be checked
    without it is checked here; its paths, scheduler, staged files and `after` are that
    machine's ft's to check.
    """
    runner = scheduler.get(executor)
    render.check_folder(paths.jobs_root())
    tasks: tuple[Resolved, ...] = ()
    combos: list[list[str]] = []
    given = list(overrides)
    if stage:
        overrides = [*overrides, "hub.offline=true"]
    if sweeps:
        if not runner.arrays:
            raise UserError(f"--sweep runs as a job array, which --executor {executor} cannot run: "
                            f"use it with --executor {_array_schedulers()}")
        combos = sweep_overrides(sweeps)
        tasks = tuple(resolve(factory, [*overrides, *combo], profile) for combo in combos)
    resolved = tasks[0] if tasks else resolve(factory, overrides, profile)
    resolved, tasks = _settled(resolved), tuple(_settled(task) for task in tasks)
    job = resolved.job
    problems = refuse_secrets(resolved, tasks, [*overrides, *(sweeps or []), after or ""])
    found, warnings = render.preflight(job, dry_run=dry_run, paths_here=not elsewhere)
    problems += found + ([] if elsewhere else runner.preflight(job, dry_run))
    for task in tasks or (resolved,):
        problems += plan_refusals(task.job, force)
    host = [] if elsewhere else host_python_problems(job)
    problems += [] if dry_run else host
    warnings = [*warnings, *host] if dry_run else warnings
    warnings += plan_warnings(job)
    if tasks:
        problems += _sweeps_that_shape_the_script(runner, tasks, combos)
    if problems:
        raise UserError(*problems)
    runner.render(job, Path("/JOB_DIR"))  # template errors surface before anything is written
    jobs = [t.job for t in tasks] or [job]
    if elsewhere:
        return Prepared(resolved, executor, tasks, after, tuple(warnings))
    staged = tuple(s for j in jobs for s in staging.stage(j)) if stage else ()  # downloads: last
    offline = _offline_problems(jobs, staging.command(factory, given, profile, sweeps), dry_run)
    offline += list(dict.fromkeys(line for j in jobs for line in staging.untrusted(j)))
    if offline and not dry_run:
        raise UserError(*offline)
    warnings += offline
    notes = _not_pulled_yet(job) if dry_run else []
    return Prepared(resolved, executor, tasks, _job_id_to_wait_for(after) if after else None,
                    tuple(warnings), staged, tuple(notes), dry_run)


def _array_schedulers() -> str:
    return scheduler.names_that(lambda runner: runner.arrays)


def _offline_problems(jobs: list, stage_command: str, dry_run: bool) -> list[str]:
    """On an offline site (hub.offline) every hub file a job names must be staged already:
    the compute nodes cannot fetch it. A dry run (on a laptop, say) only warns."""
    offline = [job for job in jobs if job.hub.offline]
    if not offline:
        return []
    try:
        lines = list(dict.fromkeys(line for job in offline for line in staging.unstaged(job)))
    except UserError as err:  # no huggingface_hub here to read the cache with
        if dry_run:
            return [f"hub.offline: cannot check the staged hub files here ({err.problems[0]})"]
        raise
    if lines:
        lines.append(f"the compute nodes cannot reach the hub (hub.offline): stage them on this login node "
                     f"first with: {stage_command}")
    return lines


def refuse_secrets(resolved: Resolved, tasks: tuple[Resolved, ...] = (), words: list[str] = ()) -> list[str]:
    """A problem for each setting (or command-line word) holding a secret's value."""
    problems = []
    for task in tasks or (resolved,):
        problems += secrets.find(job_to_dict(task.job))
    problems += secrets.find(list(words), "the command line")
    return list(dict.fromkeys(problems))


def _sweeps_that_shape_the_script(runner: scheduler.Scheduler, tasks: tuple[Resolved, ...],
                                  combos: list[list[str]]) -> list[str]:
    """One array job shares one script (resources, container, environment): a sweep axis
    whose values change the script cannot be an array."""
    scripts = [runner.render(task.job, Path("/JOB_DIR"), array_size=len(tasks)) for task in tasks]
    if len(set(scripts)) == 1:
        return []
    problems = []
    for axis, first in enumerate(combos[0]):
        key = first.partition("=")[0]
        groups: dict[tuple[str, ...], set[str]] = {}
        for combo, script in zip(combos, scripts):
            others = tuple(word for index, word in enumerate(combo) if index != axis)
            groups.setdefault(others, set()).add(script)
        if any(len(group) > 1 for group in groups.values()):
            problems.append(f"--sweep {key}: its values change the sbatch script (resources, time, container "
                            "or environment), which all tasks of one SLURM array share; submit one job per "
                            "value instead (e.g. a shell loop over `ft submit`)")
    return problems or ["the sweep's tasks need different sbatch scripts: submit one job per value instead"]


def _settled(resolved: Resolved) -> Resolved:
    """The job as its folder records it: `auto` settings decided by the plan (activation
    checkpointing, slurm.time). A job the plan cannot size keeps activation checkpointing
    `auto`, which the trainer reads as off."""
    import dataclasses

    from launcher import plan

    try:
        job, said = plan.settle(resolved.job)
    except UserError:
        job, said = resolved.job, None  # the plan's refusals name the problem
    job, timed = plan.settle_time(job)
    notes = [line for line in (said, timed) if line]
    return dataclasses.replace(resolved, job=job, notes=(*resolved.notes, *notes))


def plan_refusals(job, force: bool = False) -> list[str]:
    """What the plan and the policy know against this job before it waits in a queue."""
    from launcher import plan

    return list(dict.fromkeys(plan.refusals(job, force=force)))


def plan_warnings(job) -> list[str]:
    """What the plan says without refusing: a fit check from a guessed model shape."""
    from launcher import plan

    return plan.warnings(job)


HOST_CHECK_TIMEOUT_S = 60


def host_python_problems(job) -> list[str]:
    """Without a container (container.runtime=none) the job runs with a Python of this
    machine: the one ft runs with, or container.python. Ask that Python what it has of the
    image contract (ftcore.contract, from package metadata: no torch imported), as
    `ft image check` asks an image, so a job that would die at `import torch` is refused here."""
    import sys

    if runtime.of(job.container).contained:
        return []
    python = job.container.python or sys.executable
    found = installed_in(python)
    if isinstance(found, str):
        return [f"container.runtime=none runs the job with {python}, which could not be asked what it has "
                f"installed ({found}): give a working Python as container.python"]
    lines = contract.problems(found)
    if lines:
        lines.append(f"container.runtime=none runs the job with {python} (this machine's, no container), which "
                     f"cannot run ft's trainer: install what it lacks there ({contract.install_line('train')}), or "
                     "run in an image (container.runtime=apptainer container.image=IMAGE; `ft image check IMAGE`)")
    if found["packages"].get("trainer", {}).get("error"):
        lines.append(f"ft's trainer is not installed for {python}: {contract.install_line()} there "
                     "(or give ft's own Python as container.python)")
    quantization = found["packages"].get(contract.QUANTIZATION.module, {})
    if job.model.quantization and quantization.get("error"):
        lines.append(contract.quantization_missing(python))
    return lines


def installed_in(python: str) -> dict | str:
    """What `python` has of the image contract (ftcore.contract.installed(), from package
    metadata: no torch imported), or why it could not be asked."""
    import json
    import subprocess

    probe = Path(contract.__file__).read_text()  # run as a script: `--installed` prints installed()
    try:
        done = subprocess.run([python, "-c", probe, "--installed"], capture_output=True, text=True, timeout=HOST_CHECK_TIMEOUT_S,
                              cwd="/")  # not this folder: a checkout here would hide a missing ft
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as err:
        return getattr(err, "strerror", None) or type(err).__name__


def _not_pulled_yet(job) -> list[str]:
    container = job.container
    rt = runtime.of(container)
    if not rt.contained or not rt.needs_pull(container):
        return []
    return [f"dry run: {container.image} is not pulled yet; `ft submit` pulls it into {rt.cached(container)} first "
            f"(or `ft image pull {container.image} --runtime {rt.name}`)"]


def ready_image(job, skip_check: bool = False, echo=None) -> list[str]:
    """Before anything is written: pull a URI image into the cache once (so no srun task
    pulls), then run the image check once per image; make ft's hub cache folder, which the
    container binds. Returns notes for the user; raises
    UserError for a pull that fails or an image that cannot run the trainer."""
    from launcher import image

    container = job.container
    rt = runtime.of(container)
    if not rt.contained:
        return []
    if "HF_HUB_CACHE" in staging.environment(job):  # bound into the container: it must exist
        sharedcache.make_dir(staging.cache_dir(job))
    notes = []
    here = rt.here() is not None
    if rt.is_uri(str(container.image)):
        cached = rt.cached(container)
        if cached.is_file():
            image.check_trusted(container, cached)
            notes.append(f"image {container.image}: the {rt.suffix.lstrip('.').upper()} pulled before, {cached}")
        elif here:
            path, _ = image.pull(container.image, image.cache_dir(container), rt.name, echo)
            notes.append(f"image {container.image}: pulled once into {path}")
        elif rt.imports_at_start:
            notes.append(f"image {container.image}: not imported here ({rt.program} is not on PATH), so each node imports "
                         f"it when the job starts; `ft image pull {container.image} --runtime {rt.name}` where {rt.program} "
                         "is installed imports it once into the shared image cache")
        else:
            raise UserError(f"container.image {container.image} is not pulled yet, and {rt.program} is not on PATH here "
                            "to pull it", hint=f"run `ft image pull {container.image}` where {rt.program} is installed "
                                               "(the cache folder is shared), or give a local image path")
    local = rt.image_to_run(container)
    if skip_check:
        notes.append("image check skipped (--skip-image-check)")
    elif not image.can_check_here(container):
        notes.append(f"{rt.program} is not on PATH here, so the image was not checked (the job will tell); "
                     f"`ft image check {local} --runtime {rt.name}` "
                     f"runs the check where {rt.program} is installed")
    else:
        report, ran = image.check_once(container, local)
        torch = report.found["packages"]["torch"]["version"]
        notes.append(f"image check {'passed' if ran else 'passed before'}: Python {report.found['python']}, "
                     f"torch {torch}")
    return notes


def _job_id_to_wait_for(spec: str) -> str:
    from launcher import jobs

    view = jobs.find(spec)
    if view.problem:
        raise UserError(f"--after {spec}: {view.folder} cannot be read ({view.problem})")
    if not view.job_id:
        raise UserError(f"--after {spec}: that job has no scheduler's job id to wait for (a dry run, or a job "
                        "that ran here)")
    return view.job_id


def srun_line(prepared: Prepared, factory: str) -> tuple[str, list[str]]:
    """The srun line that runs this job with `ft train` from a workshop's own batch script,
    and the #SBATCH lines its allocation needs (nodes × tasks per node is the job's layout)."""
    from launcher.config import looks_like_path

    spec = str(prepared.resolved.factory_path) if looks_like_path(factory) else factory
    args = ["--factory", spec]
    if prepared.resolved.profile_path:
        args += ["--profile", str(prepared.resolved.profile_path)]
    args += [o.text for o in prepared.resolved.overrides]
    allocation = ("--nodes=", "--ntasks-per-node=", "--gpus-per-node=")
    header = [f"#SBATCH {o}" for o in render.sbatch_options(prepared.job, Path(".")) if o.startswith(allocation)]
    if runtime.of(prepared.job.container).contained:
        # The line binds the folder `ft train` makes its job folders in: a bind source must
        # exist when the job starts, and nothing in the user's script would create it.
        paths.jobs_root().mkdir(parents=True, exist_ok=True)
    return render.srun_line(prepared.job, args), header


def summary(prepared: Prepared) -> list[tuple[str, str]]:
    job = prepared.job
    trainer = job.trainer
    unit = "GPU" if trainer.accelerator == "gpu" else "task"
    image = job.container.image if runtime.of(job.container).contained else "none (host Python)"
    sweep = []
    if prepared.tasks:
        sweep = [("sweep", f"{len(prepared.tasks)} tasks in one SLURM array, each with the resources below")]
        sweep += [(f"  task {i}", values or "(the same as the others)")
                  for i, values in enumerate(differing([job_to_dict(task.job) for task in prepared.tasks]))]
    return [*sweep,
        ("factory", f"{job.name} ({prepared.resolved.factory_path})"),
        ("method", "LoRA" if job.peft else "full SFT"),
        ("model", str(job.model.path or f"random init ({job.model.config.get('model_type', '?')})")),
        ("resources", f"{trainer.num_nodes} node(s) × {trainer.devices} {unit}(s) = {job.world_size} {unit}(s)"
                      + (", for each sweep task" if prepared.tasks else "")),
        ("batch", f"global {job.data.global_batch_size} = micro {job.data.micro_batch_size} × "
                  f"accumulation {job.grad_accum_steps} × data-parallel {job.world_size}"),
        ("steps", str(trainer.max_steps) if trainer.max_steps else f"{trainer.num_epochs} epoch(s)"),
        ("container", f"{job.container.runtime}: {image}"),
        ("time limit", scheduler.get(prepared.executor).time_limit(job)),
        ("partition", job.slurm.partition or "(cluster default)"),
        ("profile", str(prepared.resolved.profile_path or "none")),
    ]


def write(prepared: Prepared, argv: list[str] | None = None, root: Path | None = None) -> Path:
    """The complete job folder: resolved config(s), script, exact command line; for a real
    submission also its record, from the first moment (`submitting`), so that no reader takes
    the folder for a dry run (`ft clean --dry-runs`) while sbatch answers, or after a Ctrl-C."""
    job = prepared.job
    files = {jobdir.CONFIG: jobdir.config_text(job_to_dict(job)), jobdir.COMMAND: jobdir.command_line(argv)}
    for index, task in enumerate(prepared.tasks):
        files[f"tasks/{index}/{jobdir.CONFIG}"] = jobdir.config_text(job_to_dict(task.job))

    def contents(folder: Path) -> dict[str, str]:
        script = scheduler.get(prepared.executor).render(job, folder, array_size=len(prepared.tasks),
                                                         dependency=prepared.after)
        record = {} if prepared.dry_run else {jobdir.RECORD: jobdir.record_text(
            executor=prepared.executor, job_id=None, factory=job.name, folder=str(folder), history=[],
            submission="submitting")}
        return {**files, jobdir.SCRIPT: script, **record}

    return jobdir.create(job.name, contents, root)


def submit(folder: Path, factory: str, history: list[dict] | None = None, job_name: str | None = None,
           executor: str = scheduler.DEFAULT, runs: dict | None = None) -> str:
    """Hand the folder's script to the scheduler; if refused, a new folder is removed so nothing
    half-done stays. `runs`: what a short job after training runs (its record keeps it)."""
    with jobdir.locked(folder):
        return _submit_and_record(folder, factory, history, job_name, executor, runs)


def _submit_and_record(folder: Path, factory: str, history: list[dict] | None, job_name: str | None,
                       executor: str, runs: dict | None = None) -> str:
    record = {"executor": executor, "factory": factory, "folder": str(folder), "history": history or [],
              **({"runs": runs} if runs else {})}
    runner = scheduler.get(executor)
    look = (f"look for it with {runner.lost_job_hint(job_name)}; once it starts, `ft status {folder}` shows its id. "
            f"If it is not there, `ft resubmit {folder}`")
    try:
        job_id = runner.submit(folder)
    except KeyboardInterrupt:
        # The scheduler may have queued the job before it was interrupted: keep the folder, say so.
        jobdir.write_record(folder, **record, job_id=None, submission="interrupted")
        raise UserError(f"interrupted while {runner.submit_command} was answering: the job may have been submitted; "
                        f"its folder {folder} was kept", hint=look) from None
    except SubmissionUnclear as err:
        # The job may exist and run in this folder: keep it, and keep what the scheduler said.
        jobdir.write_record(folder, **record, job_id=None, submission="unclear",
                            sbatch_answer=secrets.redact(err.raw)[-4000:])
        err.problems.append(f"the job may have been submitted; its folder {folder} was kept")
        err.hint = look
        raise
    except SchedulerError as err:
        if history is None:
            shutil.rmtree(folder, ignore_errors=True)
            err.problems.append(f"nothing was submitted; the job folder {folder} was removed")
        raise
    try:
        jobdir.write_record(folder, **record, job_id=job_id)
    except OSError as err:
        raise UserError(f"job {job_id} was submitted, but its record {folder / jobdir.RECORD} could not be "
                        f"written ({err.strerror})",
                        hint=f"the job runs anyway; once it starts, its events in {folder} carry its id") from None
    return job_id


@dataclass(frozen=True)
class Resubmission:
    """A job folder about to be submitted again, checked and rendered; nothing written yet."""

    view: Any  # launcher.jobs.JobView
    resolved: Resolved
    executor: str
    script: str
    warnings: tuple[str, ...] = ()

    @property
    def job(self):
        return self.resolved.job


def prepare_resubmit(view, overrides: list[str], profile: str | None = None, executor: str | None = None,
                     dry_run: bool = False) -> Resubmission:
    """Check and render a resubmission of `view`'s folder: it continues from the folder's latest
    checkpoint. Overrides apply on top of the folder's resolved config; the executor is the
    job's own unless given (a local job resumes locally). Writes nothing."""
    if view.scheduler and not view.scheduler.ft_script:
        raise UserError(*_not_ours(view))
    if view.record.get("runs"):
        raise UserError(f"{view.label} is a short job after training ({view.record['runs'].get('command', '?')}), "
                        "not a training job: run its command again instead "
                        f"(`ft eval {view.record['runs'].get('run', 'JOB')} --tasks ...`)")
    _check_ended(view)
    if view.task is not None:
        raise UserError(f"{view.label} is one task of a sweep: resubmit the whole sweep ({view.job_id})")
    # A dry run's folder was never submitted: it goes where ft submits by default.
    executor = executor or (view.executor if view.scheduler else scheduler.DEFAULT)
    runner = scheduler.get(executor)
    tasks = len(list((view.folder / layout.TASKS).glob("*/" + jobdir.CONFIG)))
    if tasks and overrides:
        raise UserError("a sweep is resubmitted as it was: overrides apply to single jobs only")
    if tasks and not runner.arrays:
        raise UserError(f"a sweep runs as a job array, which --executor {executor} cannot run: resubmit it with "
                        f"--executor {_array_schedulers()}")
    resolved = resolve(str(view.folder / jobdir.CONFIG), overrides, profile)
    job = resolved.job
    found, missing = render.preflight(job, job_dir=view.folder, dry_run=dry_run)
    problems = (refuse_secrets(resolved, words=overrides) + found + runner.preflight(job, dry_run)
                + plan_refusals(job, force=True))
    problems += [] if dry_run else host_python_problems(job) + staging.untrusted(job)
    if problems:
        raise UserError(*problems)
    script = runner.render(job, view.folder, tasks)
    return Resubmission(view, resolved, executor, script, (*schedule_warnings(view, job), *missing))


def _check_ended(view) -> None:
    from launcher import jobs

    if view.problem:
        raise UserError(f"{view.folder} cannot be read: {view.problem}")
    current = jobs.state(view)
    if not jobs.is_finished(current):
        raise UserError(f"job {view.label} is still {current}: `ft cancel {view.label}` first")


def schedule_warnings(view, job) -> list[str]:
    """What an override does to the learning rate of a run that resumes from a checkpoint: the
    schedule is a function of the step and the total, so a new total re-shapes it mid-run."""
    from ftcore.schedule import lr_at
    from ftcore.schema import Job

    newest = layout.newest_complete(view.folder)
    if newest is None or not view.config:
        return []
    try:
        old = Job.model_validate(view.config)
    except ValueError:
        return []
    keys = {"trainer.max_steps": (old.trainer.max_steps, job.trainer.max_steps),
            "trainer.num_epochs": (old.trainer.num_epochs, job.trainer.num_epochs),
            "optim.lr": (old.optim.lr, job.optim.lr),
            **{f"optim.lr_scheduler.{k}": (getattr(old.optim.lr_scheduler, k), getattr(job.optim.lr_scheduler, k))
               for k in type(job.optim.lr_scheduler).model_fields}}
    changed = {key: pair for key, pair in keys.items() if pair[0] != pair[1]}
    if not changed:
        return []
    step = int(newest.name.rpartition("-")[2])
    what = ", ".join(f"{key} {a} → {b}" for key, (a, b) in changed.items())
    text = f"{what}: this run resumes at step {step + 1} from {newest.name}, and its learning-rate schedule changes"
    if old.trainer.max_steps and job.trainer.max_steps:
        before = lr_at(step + 1, old.trainer.max_steps, old.optim)
        after = lr_at(step + 1, job.trainer.max_steps, job.optim)
        text += f": lr at step {step + 1} becomes {after:.2e} (it would have been {before:.2e})"
        if job.trainer.max_steps > old.trainer.max_steps and job.optim.lr_scheduler.name != "constant":
            text += f"; the {job.optim.lr_scheduler.name} decay restarts its course toward step {job.trainer.max_steps}"
    return [text + ". For the same curve, start a new job instead (ft submit)."]


def history(view) -> list[dict]:
    """The folder's submissions so far, oldest first, for the next submission's record."""
    before = view.record.get("history") if view.record else None
    done = [*(before if isinstance(before, list) else [])]
    if view.record and view.record.get("time"):
        done.append({k: view.record.get(k) for k in ("executor", "job_id", "time")})
    return done


def apply_resubmit(resubmission: Resubmission, argv: list[str] | None = None) -> str | None:
    """Under the folder's lock: check again that the job has ended, write the new config, script
    and command line (command.txt keeps every submission), and sbatch it (the job id); a local
    job is left for `local.run` (None). If the scheduler refuses, every file is put back."""
    from launcher import jobs

    folder = resubmission.view.folder
    with jobdir.locked(folder):
        view = jobs.load(folder)  # as it is now that no other ft command is changing it
        _check_ended(view)
        runner = scheduler.get(resubmission.executor)
        if not runner.runs_here:
            ready_image(resubmission.job)
        commands = _text_or_none(folder / jobdir.COMMAND) or ""
        new = {jobdir.CONFIG: jobdir.config_text(job_to_dict(resubmission.job)), jobdir.SCRIPT: resubmission.script,
               jobdir.COMMAND: commands + jobdir.command_line(argv)}
        jobdir.check_secrets(new)
        old = {name: _text_or_none(folder / name) for name in new}
        sbatch_called = False
        try:
            for name, text in new.items():
                write_atomic(folder / name, text)
            if runner.runs_here:
                return None
            sbatch_called = True
            return _submit_and_record(folder, resubmission.job.name, history(view), resubmission.job.job_name,
                                      resubmission.executor)
        except SubmissionUnclear:
            raise
        except SchedulerError as err:
            _put_back(folder, old)
            err.problems.append(f"nothing was submitted; {folder} is as it was")
            raise
        except BaseException:
            if not sbatch_called:
                _put_back(folder, old)  # failed before sbatch ran: no job uses the new files
            raise


def resubmit(view, overrides: list[str], profile: str | None = None, executor: str | None = None) -> str | None:
    """Submit a job folder again at once (no questions), to its own scheduler unless told:
    same folder, so the trainer continues from its latest checkpoint. The library call behind
    `ft resubmit --yes` (None for a local job, which the caller then runs)."""
    return apply_resubmit(prepare_resubmit(view, overrides, profile, executor))


def _put_back(folder: Path, old: dict[str, str | None]) -> None:
    for name, text in old.items():
        if text is None:
            (folder / name).unlink(missing_ok=True)
        else:
            write_atomic(folder / name, text)


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _not_ours(view) -> list[str]:
    """`ft resubmit` of an `ft train` folder: ft did not write the script, so it cannot submit it."""
    newest = layout.newest_complete(view.folder)
    resumes = f"it continues from {newest.name}" if newest else "it starts from the beginning (no checkpoint yet)"
    return view.scheduler.resubmit_advice(view, resumes)
