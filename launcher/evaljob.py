"""A short job after training: lm-evaluation-harness on a job's checkpoint, as a SLURM job (and
ft's other model commands the same way).

    ft eval JOB --tasks hellaswag,./my_task.yaml        # JOB ran on SLURM: an evaluation job there
    ft eval JOB --tasks ... --executor local             # here, in this process
    ft eval JOB --show                                    # the latest scores, as a table
    ft merge JOB --executor slurm ; ft export JOB --to vllm --merge --executor slurm ; ft generate JOB "x" --executor slurm

The evaluation job is the training job's own settings (image, binds, partition, account, hub
cache) on one task with one GPU, its script rendered and submitted through the same seams as
training (`Scheduler.render(command=...)`, `render.container_groups` with ft's model tools
bound in), in a job folder of its own that `ft jobs/status/logs/cancel` follow like any job.
Inside it runs `python -m fttools.lmeval`, which writes lm-eval's results JSON into the
training run's folder (`eval/<time>-lm-eval.json`, ftcore.evaltasks names it). Its datasets
come from ft's hub cache, offline (HF_DATASETS_OFFLINE=1): `ft stage --tasks` fills it, and a
task whose data is not there is refused here, with the command that stages it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ftcore import contract, evaltasks, layout
from ftcore.errors import UserError
from ftcore.schema import Job, deep_merge, job_to_dict
from launcher import config, jobdir, jobs, locate, render, runtime, scheduler, sharedcache, stage as staging

TIME = "01:00:00"  # the evaluation job's time limit unless --time says otherwise
COMMAND = "eval"


@dataclass(frozen=True)
class Options:
    """What lm-eval is told besides the tasks (its own defaults where ft names nothing)."""

    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: str = "1"
    log_samples: bool = False
    dtype: str | None = None

    def words(self) -> list[str]:
        words = ["--batch-size", self.batch_size]
        words += ["--limit", str(self.limit)] if self.limit is not None else []
        words += ["--num-fewshot", str(self.num_fewshot)] if self.num_fewshot is not None else []
        words += ["--dtype", self.dtype] if self.dtype else []
        return words + ["--log-samples"] * self.log_samples


def batch_size(text: str) -> str:
    """lm-eval's --batch_size: a number, `auto` or `auto:N`."""
    if text.isdigit() and int(text) > 0 or text == "auto" or (text.startswith("auto:") and text[5:].isdigit()):
        return text
    raise UserError(f"--batch-size {text!r}: give a number, `auto` or `auto:N` (lm-eval's batch sizes)")


def _top_folder(run: Path) -> Path:
    """The job folder of a run (a sweep task's run is tasks/<i>/ inside it)."""
    return run.parent.parent if run.parent.name == layout.TASKS else run


def default_executor(spec: str) -> str:
    """Where a job's evaluation runs unless told: on SLURM where the job ran on SLURM, else here."""
    run = layout.owning_run(locate.checkpoint_folder(spec))
    if run is None:
        return scheduler.here()
    ran = jobs.load(_top_folder(run)).scheduler
    return ran.name if ran is not None and ran.by_id and ran.ft_script else scheduler.here()


@dataclass(frozen=True)
class PostJob:
    """A short job after training: the training job's settings on one task, running one of ft's
    model tools (`python -m fttools.lmeval`, `python -m fttools.job merge|export|generate`)."""

    job: Job  # the training job's settings, one task
    run_dir: Path  # the training run it reads
    checkpoint: Path
    command: list[str]  # what the task runs, after the job's Python
    runs: dict  # what its record keeps (ftcore.records SUBMISSION_FIELDS `runs`)
    out: Path | None = None  # where its results land (lm-eval's JSON, a merged model), if anywhere
    executor: str = scheduler.DEFAULT  # the scheduler that runs it


def datasets_cache(job: Job) -> Path:
    """Where lm-eval's datasets are staged and read: beside the hub files in ft's hub cache."""
    return staging.cache_dir(job) / DATASETS


DATASETS = "datasets"


def prepare(spec: str, tasks: evaltasks.Tasks, options: Options, time: str | None = None,
            executor: str = scheduler.DEFAULT, dry_run: bool = False) -> PostJob:
    """The evaluation job of `spec`'s checkpoint, checked; nothing written."""
    checkpoint, run, trained = _training(spec, executor)
    out = run / layout.EVAL / evaltasks.results_name(evaltasks.stamp())
    command = ["-m", "fttools.lmeval", str(checkpoint), "--tasks", tasks.words(), "--out", str(out), *options.words()]
    runs = {"command": COMMAND, "run": str(run), "checkpoint": str(checkpoint), "tasks": tasks.words(),
            "results": str(out)}
    return _prepare(trained, run, checkpoint, command, runs, out, [str(f) for f in tasks.folders], time, executor,
                    dry_run, tasks=tasks)


TOOLS = ("merge", "export", "generate")  # the model commands that run as a short job too


def prepare_tool(spec: str, tool: str, words: list[str], out: Path | None = None, time: str | None = None,
                 executor: str = scheduler.DEFAULT, dry_run: bool = False) -> PostJob:
    """`ft merge|export|generate JOB ... --executor slurm`: the command as a short job on a GPU node.
    `words`: the tool's options as fttools.job reads them; `out`: a folder it writes (its parent is bound)."""
    if tool not in TOOLS:
        raise UserError(f"{tool} does not run as a job: choose one of {', '.join(TOOLS)}")
    checkpoint, run, trained = _training(spec, executor)
    if out is not None:
        out = Path(out).expanduser().absolute()
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: its folder {out.parent} does not exist")
    command = ["-m", "fttools.job", tool, str(checkpoint), *words, *(["--out", str(out)] if out else [])]
    runs = {"command": tool, "run": str(run), "checkpoint": str(checkpoint),
            **({"results": str(out)} if out else {})}
    binds = [str(out.parent)] if out is not None and not _inside(out, run) else []
    return _prepare(trained, run, checkpoint, command, runs, out, binds, time, executor, dry_run)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _training(spec: str, executor: str) -> tuple[Path, Path, dict]:
    """(the checkpoint folder, its run, the run's resolved job) for a job that runs elsewhere."""
    runner = scheduler.get(executor)
    if runner.runs_here or not runner.by_id:
        raise UserError(f"--executor {executor} runs the command here, in this process: it needs no job")
    checkpoint = locate.checkpoint_folder(spec)
    run = layout.owning_run(checkpoint)
    if run is None:
        raise UserError(f"{checkpoint} is not a checkpoint of an ft job, so there are no job settings (image, "
                        "partition) to run it with: run it here with --executor local")
    return checkpoint, run, config.load_yaml((run / layout.CONFIG).read_text(), str(run / layout.CONFIG))


def _prepare(trained: dict, run: Path, checkpoint: Path, command: list[str], runs: dict, out: Path | None,
             binds: list[str], time: str | None, executor: str, dry_run: bool,
             tasks: evaltasks.Tasks | None = None) -> PostJob:
    """The training job's settings on one task running `command`; checked (with `tasks`: that
    its Python has lm-eval and that the tasks' data is staged for an offline run)."""
    runner = scheduler.get(executor)
    settings = job_to_dict(config.validate(trained))
    cache = datasets_cache(config.validate(trained))
    job = config.validate(deep_merge(settings, {
        "trainer": {"num_nodes": 1, "devices": 1},
        "slurm": {"time": time or TIME, "job_name": f"ft-{runs['command']}-{settings['name']}"[:128]},
        "container": {"binds": list(dict.fromkeys([*settings["container"]["binds"], str(run), *binds])),
                      "env": {"HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache)}},
    }))
    if not dry_run:
        sharedcache.make_dir(cache)  # the job binds it: it must exist (as ready_image makes the hub cache)
    problems, _ = render.preflight(job, dry_run=dry_run)
    problems += runner.preflight(job, dry_run)
    if not dry_run:
        problems += lm_eval_problems(job) if tasks else submit_problems(job)
    if tasks and not dry_run and not problems:
        from launcher import taskdata

        problems += taskdata.unstaged(tasks, staging.cache_dir(job), cache)
    if problems:
        raise UserError(*problems)
    return PostJob(job, run, checkpoint, command, runs, out, executor)


def submit_problems(job: Job) -> list[str]:
    """What stops a short job's Python from running ft's model tools (the trainer's contract)."""
    from launcher import submit

    if not runtime.of(job.container).contained:
        return submit.host_python_problems(job)
    submit.ready_image(job)
    return []


def lm_eval_problems(job: Job) -> list[str]:
    """Whether the job's Python (its image, or this machine's without one) can run lm-eval."""
    from launcher import image, submit

    if not runtime.of(job.container).contained:
        python = job.container.python or sys.executable
        found = submit.installed_in(python)
        if isinstance(found, str):
            return [f"cannot ask {python} what it has installed ({found})"]
        where = f"{python} (container.runtime=none)"
    else:
        if runtime.of(job.container).here() is None:
            return []  # the job's own check says it (fttools.lmeval's one-line error)
        submit.ready_image(job)
        report, _ = image.check_once(job.container, image.image_to_run(job.container))
        found, where = report.found, f"the image {job.container.image}"
    problem = contract.lm_eval_problem(found)
    return [f"{where} cannot run lm-eval: {problem}; or install ft with its extra "
            f"({contract.install_line('eval')})"] if problem else []


def script(e: PostJob) -> str:
    """The script `write` would put into a new job folder (for --dry-run: its folder is `NEW`)."""
    from launcher import paths

    return scheduler.get(e.executor).render(e.job, paths.jobs_root() / "NEW", command=e.command)


def write(e: PostJob, argv: list[str] | None = None) -> Path:
    """The short job's folder under the jobs root (config, script, command line, record)."""
    runner = scheduler.get(e.executor)

    def contents(folder: Path) -> dict[str, str]:
        return {jobdir.CONFIG: jobdir.config_text(job_to_dict(e.job)), jobdir.COMMAND: jobdir.command_line(argv),
                jobdir.SCRIPT: runner.render(e.job, folder, command=e.command),
                jobdir.RECORD: jobdir.record_text(executor=e.executor, job_id=None, factory=e.job.name, folder=str(folder),
                                                  history=[], submission="submitting", runs=e.runs)}

    return jobdir.create(f"{e.job.name}-{e.runs['command']}", contents)


def submit(e: PostJob, folder: Path) -> str:
    from launcher import submit as submitting

    if e.runs["command"] == COMMAND:
        (e.run_dir / layout.EVAL).mkdir(exist_ok=True)  # where the results land
    return submitting.submit(folder, e.job.name, job_name=e.job.job_name, executor=e.executor, runs=e.runs)


def stage_tasks(words: str, factory: str | None, overrides: list[str], profile: str | None) -> list[str]:
    """`ft stage --tasks`: the tasks' data into the hub cache the job (or the site profile) names."""
    from launcher import paths, taskdata

    tasks = evaltasks.parse(words)
    if factory is not None:
        hub = staging.cache_dir(config.resolve(factory, overrides, profile).job)
    else:
        site = (config.load_profile(profile)[0].get("hub") or {}).get("cache_dir")
        hub = (Path(str(site)).expanduser() if site else paths.ft_home() / "hub").absolute()
    sharedcache.make_dir(hub / DATASETS)
    return taskdata.stage(tasks, hub, hub / DATASETS)


# --------------------------------------------------------------------------- reading the results


def latest(folder: Path) -> tuple[Path, dict] | None:
    """The newest results file in an eval folder and lm-eval's results in it; None before any."""
    for path in reversed(evaltasks.all_results(folder)):
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file someone else broke: the one before it
        if isinstance(value, dict):
            return path, value
    return None


def status_lines(view) -> list[str]:
    """`ft status` lines: an evaluation job's task and results file; a training run's latest scores."""
    runs = view.record.get("runs") if isinstance(view.record.get("runs"), dict) else None
    if runs:
        what = f" on {runs.get('tasks')}" if runs.get("tasks") else ""
        return [f"runs       ft {runs.get('command')} {runs.get('checkpoint')}{what}",
                *([f"results    {runs['results']}"] if runs.get("results") else
                  [f"output     `ft logs {view.label}`"])]
    found = latest(view.run_dirs[0] / layout.EVAL)
    if found is None:
        return []
    path, results = found
    rows = evaltasks.scores(results)
    shown = "; ".join(f"{task} {metric} {value}" for task, metric, value, _ in rows[:6])
    more = f" (+{len(rows) - 6} more)" if len(rows) > 6 else ""
    return [f"lm-eval    {shown}{more}  ({path.name}; `ft eval {view.label} --show`)"]


def show(spec: str) -> tuple[Path, dict]:
    """The results `ft eval JOB --show` prints: the newest of the job's run."""
    folder = evaltasks.results_folder(locate.checkpoint_folder(spec))
    found = latest(folder)
    if found is None:
        raise UserError(f"no lm-eval results in {folder} yet", hint=f"ft eval {spec} --tasks TASKS")
    return found
