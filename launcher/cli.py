"""ft: launch LoRA and full SFT fine-tuning jobs on SLURM, inside Singularity/Apptainer.

    ft factories
    ft show   --factory llama31_8b trainer.max_steps=250 [--explain]
    ft submit --factory llama31_8b trainer.max_steps=250 data.global_batch_size=8 --yes
    ft submit --factory tiny --executor local
    srun ft train --factory llama31_8b trainer.devices="${SLURM_GPUS_PER_NODE}"   # in your own script
    ft stage  --factory llama32_1b_squad                # hub model + dataset → shared cache
    ft plan   --factory llama3_8b_sft                   # GPU memory per GPU: does it fit?
    ft merge JOB ; ft generate JOB "prompt" ; ft eval JOB --data val.jsonl
    ft eval JOB --tasks hellaswag,./my_task.yaml ; ft eval JOB --show   # lm-evaluation-harness
    ft export JOB --to vllm ; ft push JOB me/model --dry-run ; ft plot JOB [JOB...]
    ft image check IMAGE ; ft image pull docker://REPO:TAG

The CLI only parses and prints; each command calls library functions that tests call
directly. Heavy modules (torch, transformers, peft) are never imported here, and even the
launcher's own modules load lazily so that `ft --help` stays instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import os

# ft has no pydantic plugins; looking for them costs a scan of every installed package.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # noqa: E402

from launcher import __version__  # noqa: E402

app = typer.Typer(
    name="ft",
    help=f"ft {__version__}: launch LoRA and full SFT fine-tuning jobs on SLURM clusters inside containers.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# What the commands that resolve a job take after their options (Typer lists only options).
OVERRIDES_EPILOG = ("Overrides: KEY=VALUE in dot notation after the options, values read as YAML, e.g. "
                    "trainer.max_steps=250 optim.lr=1e-4 peft=none data.global_batch_size=8; "
                    "`ft show --factory NAME --explain` lists every key.")
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

FactoryOpt = typer.Option(None, "--factory", "-f", help="Factory name (see `ft factories`) or path to a YAML file.",
                          show_default=False)


def _factory(factory: str | None, args: list[str], command: str) -> tuple[str, list[str]]:
    """--factory, or the mistake of giving the name without it (`ft submit llama31_8b`)."""
    from ftcore.errors import UserError

    if factory is not None:
        return factory, args
    named = [word for word in args if "=" not in word and not word.startswith("-")]
    if named:
        rest = " ".join(word for word in args if word != named[0])
        raise UserError(f"the factory is given with --factory: ft {command} --factory {named[0]}"
                        + (f" {rest}" if rest else ""), hint="`ft factories` lists the factories")
    raise UserError(f"missing --factory NAME|FILE: ft {command} --factory NAME [KEY=VALUE ...]",
                    hint="`ft factories` lists the factories")
ProfileOpt = typer.Option(None, "--profile", help="Cluster profile YAML (default: $FT_PROFILE or ~/.config/ft/cluster.yaml).")
ClusterOpt = typer.Option(None, "--cluster", help="Run it on this cluster's login node over ssh: a Host of "
                          "~/.ssh/config or a `clusters:` entry of ft's config.")


def _print_version(value: bool) -> None:
    if value:
        from ftcore.contract import DISTRIBUTION

        print(f"ft {__version__} (distribution {DISTRIBUTION})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print ft's version and exit."),
) -> None:
    """Launch LoRA and full SFT fine-tuning jobs on SLURM clusters inside containers."""


def _console(stderr: bool = False, soft_wrap: bool = True, piped_width: int | None = None):
    """soft_wrap=False for tables: only then does rich fit them to the terminal's width.
    `piped_width`: the width when the output is no terminal (a pipe, `--cluster`'s ssh), where
    rich would assume 80 columns and wrap every row."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = piped_width if piped_width and not stream.isatty() and "COLUMNS" not in os.environ else None
    return Console(stderr=stderr, highlight=False, soft_wrap=soft_wrap, width=width)


@app.command("factories")
def factories_cmd(
    as_json: bool = typer.Option(False, "--json", help="One JSON list for scripts (with each factory's file)."),
) -> None:
    """List the built-in factories and those in your factory folders."""
    import json

    from launcher import config

    rows = []
    for info in config.list_factories():
        data = info.data
        model = data.get("model") or {}
        trainer = data.get("trainer") or {}
        row = {"name": info.name, "path": str(info.path), "source": info.source, "error": info.error}
        if not info.error:
            gpus = f"{trainer.get('num_nodes', 1)}×{trainer.get('devices', 1)}"
            row.update(
                model=str(model.get("path") or f"random {model.get('config', {}).get('model_type', '')}".strip()),
                method="SFT" if config.normalise_switches(data).get("peft", {}) is None else "LoRA",
                gpus=gpus + " CPU" if trainer.get("accelerator") == "cpu" else gpus,
                description=str(data.get("description", "")),
            )
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # 80 columns: one line per factory, its name (what --factory takes) never cut; the
    # description wraps on its own indented lines below.
    import shutil
    import textwrap

    width = min(shutil.get_terminal_size((80, 24)).columns, 100)
    columns = ("name", "model", "method", "GPUs", "source")
    cells = [(r["name"], r.get("model", ""), r.get("method", ""), r.get("gpus", ""), r["source"]) for r in rows]
    widths = [max(len(c) for c in column) for column in zip(columns, *cells)]
    print("ft factories: `ft show --factory NAME` prints one, with the file it comes from")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row, line in zip(rows, cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        about = f"[broken] {row['error']}" if row["error"] else row["description"]
        if about:
            print(textwrap.fill(about, width - 1, initial_indent="    ", subsequent_indent="    "))


@app.command("show", context_settings=_PASS_THROUGH, epilog=OVERRIDES_EPILOG,
             options_metavar="[OPTIONS] [KEY=VALUE]...")
def show_cmd(
    ctx: typer.Context,
    factory: Optional[str] = FactoryOpt,
    explain: bool = typer.Option(False, "--explain", help="Print each field's description and default."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Print the fully resolved job as YAML: every field, after factory < profile < overrides."""
    from ftcore import schema
    from launcher import config, explain as explain_mod

    factory, args = _factory(factory, list(ctx.args), "show")
    resolved = config.resolve(factory, args, profile)
    # Comments, so the output stays the YAML of the job: which files it was resolved from.
    source = config.factory_source(resolved.factory_path)
    print(f"# factory {resolved.job.name}: {resolved.factory_path} ({source})")
    if resolved.profile_path:
        print(f"# cluster profile: {resolved.profile_path}")
    for note in resolved.notes:
        print(f"# {note}")
    if explain:
        sys.stdout.write(explain_mod.explain(resolved.job))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(schema.job_to_dict(resolved.job), sort_keys=False, allow_unicode=True))


@app.command("submit", context_settings=_PASS_THROUGH, epilog=OVERRIDES_EPILOG,
             options_metavar="[OPTIONS] [KEY=VALUE]...")
def submit_cmd(
    ctx: typer.Context,
    factory: Optional[str] = FactoryOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the job folder and print the script; never call sbatch."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Submit without asking."),
    executor: Optional[str] = typer.Option(None, "--executor", help="`slurm` (sbatch, the default) or `local` (run here, no scheduler)."),
    detach: bool = typer.Option(False, "--detach", help="With --executor local: run in the background."),
    sweep: List[str] = typer.Option([], "--sweep", help="key=v1,v2,...: one SLURM array task per value (repeat for a grid)."),
    after: Optional[str] = typer.Option(None, "--after", help="Start only after this job completed successfully (afterok)."),
    skip_image_check: bool = typer.Option(False, "--skip-image-check", help="Do not run the image contract check in the container image."),
    print_srun: bool = typer.Option(False, "--print-srun", help="With --dry-run: print only the srun line that "
                                    "runs this job with `ft train` in your own batch script; write nothing."),
    force: bool = typer.Option(False, "--force", help="Submit even though `ft plan` says it will not fit its GPUs."),
    stage: bool = typer.Option(False, "--stage", help="First download the job's hub model and dataset into the shared cache (as `ft stage`); the job then runs offline."),
    profile: Optional[str] = ProfileOpt,
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Resolve, validate, write the job folder, render the sbatch script and submit it."""
    from ftcore import layout
    from ftcore.errors import UserError
    from launcher import image, scheduler, submit

    executor = executor or scheduler.DEFAULT
    if print_srun and (not dry_run or sweep or after or scheduler.get(executor).task_command is None):
        raise UserError("--print-srun prints one job's srun line for your own script and submits nothing: "
                        "use it with --dry-run, without --sweep, --after or --executor "
                        + scheduler.names_that(lambda other: other.task_command is None))
    factory, args = _factory(factory, list(ctx.args), "submit")
    if cluster:
        _submit_on_cluster(cluster, factory, args, profile, executor, dry_run, yes, sweep, after,
                           stage, force, skip_image_check, print_srun)
        return
    prepared = submit.prepare(factory, args, profile, executor, dry_run, sweep, after, stage, force)
    err = _console(stderr=True)
    _print_notes(prepared, err)
    if print_srun:
        _print_srun_line(prepared, factory, err)
        return
    if dry_run and prepared.tasks:
        err.print(f"sweep: {len(prepared.tasks)} tasks in one SLURM array", markup=False)
        for key, value in submit.summary(prepared)[1:len(prepared.tasks) + 1]:
            err.print(f"{key}: {value}", markup=False)
    if not dry_run:
        _print_summary(prepared, err)
        if not yes:
            tasks = len(prepared.tasks)
            _confirm(f"Submit these {tasks} tasks (one SLURM array)?" if tasks else "Submit this job?",
                     "nothing was submitted (--dry-run only writes and prints the script)")
        for note in submit.ready_image(prepared.job, skip_image_check, echo=image.echo_stderr):
            err.print(note)
    folder = submit.write(prepared)
    if dry_run:
        sys.stdout.write((folder / layout.SCRIPT).read_text())
        err.print(f"dry run: nothing submitted. Job folder: {folder}")
        return
    runner = scheduler.get(executor)
    job_id = None if runner.runs_here else submit.submit(folder, prepared.job.name, job_name=prepared.job.job_name,
                                                         executor=executor)
    _started(runner, prepared.job, folder, job_id, detach)


def _print_notes(prepared, console) -> None:
    """What preparing the job found to say: resolution notes, staged files, warnings, dry-run notes."""
    from rich.markup import escape

    for note in prepared.resolved.notes:
        console.print(f"ft: {note}" if not note.startswith("  ") else note, markup=False)
    for staged in prepared.staged:
        console.print(staged.line(), markup=False)
    for warning in prepared.warnings:
        console.print(f"[bold yellow]ft: warning:[/] {escape(warning)}")
    for note in prepared.notes:
        console.print(note, markup=False)


def _print_srun_line(prepared, factory: str, console) -> None:
    """`--print-srun`: the allocation as comments on stderr, the line itself on stdout."""
    from launcher import submit

    line, header = submit.srun_line(prepared, factory)
    each = "one per GPU" if prepared.job.trainer.accelerator == "gpu" else "CPU processes, no GPUs"
    console.print(f"# the allocation this line expects ({prepared.job.world_size} task(s), {each}):\n"
                  + "\n".join(header), markup=False)
    print(line)


def _started(runner, job, folder: Path, job_id: str | None, detach: bool, history: list | None = None) -> None:
    """The end of submit and resubmit: a job handed to a queue is named; one that runs here is
    followed (or left running, `--detach`), and its exit status is ft's."""
    if not runner.runs_here:
        print(f"Submitted batch job {job_id}")
        print(f"Job folder: {folder}")
        return
    err = _console(stderr=True)
    err.print(f"Job folder: {folder}")
    status = runner.run(job, folder, detach=detach, history=history)
    if detach:
        err.print(f"running in the background; follow with: ft logs {folder} -f")
    raise typer.Exit(status)


def _submit_on_cluster(name: str, factory: str, overrides: list[str], profile: Optional[str], executor: str,
                       dry_run: bool, yes: bool, sweep: List[str], after: Optional[str], stage: bool, force: bool,
                       skip_image_check: bool, print_srun: bool) -> None:
    """`ft submit --cluster NAME`: every check that needs no cluster here, before connecting;
    the same summary and question; then the resolved job and its small files go to the
    login node, whose ft submits it (its sbatch line and job folder are printed)."""
    import os

    from ftcore.errors import UserError
    from launcher import remote, scheduler, submit

    if executor != scheduler.DEFAULT or print_srun:
        raise UserError(f"--cluster submits to the cluster's {scheduler.DEFAULT} (its ft's default executor): "
                        "drop --executor and --print-srun")
    cluster = remote.cluster(name)
    # The job is resolved here against the cluster's profile (this machine's copy of it, if
    # any) and nothing else: the login node then adds no profile of its own.
    profile = profile or (str(cluster.profile) if cluster.profile else os.devnull)
    prepared = submit.prepare(factory, overrides, profile, scheduler.DEFAULT, dry_run, sweep, after, stage, force,
                       elsewhere=True)
    upload = remote.plan_upload(prepared.job, cluster.name)
    err = _console(stderr=True)
    for note in prepared.resolved.notes:
        err.print(f"ft: {note}" if not note.startswith("  ") else note, markup=False)
    _warn(prepared.warnings, err)
    if dry_run:
        # The cluster's ft renders the preview, so it is the script the cluster will run: its
        # FT_HOME, hub cache, image, code binds and Python, not this machine's. The job and its
        # small files go to an upload folder there; its dry-run job folder is written there.
        for line in upload.sent:
            err.print(f"sent       {line}", markup=False)
        job_yaml, empty_profile = remote.send(cluster, upload, prepared.job.name)
        words = remote.submit_words(job_yaml, empty_profile, sweep, after, stage, force, skip_image_check)
        raise typer.Exit(remote.ft_passthrough(cluster, [*(w for w in words if w != "--yes"), "--dry-run"]))
    _print_summary(prepared, err)
    err.print(f"cluster    {cluster.name} ({cluster.ssh_line}; ft there: {' '.join(cluster.ft)})", markup=False)
    for line in upload.sent:
        err.print(f"sent       {line}", markup=False)
    if not yes:
        _confirm(f"Submit this job on {cluster.name}?", "nothing was sent or submitted")
    job_yaml, empty_profile = remote.send(cluster, upload, prepared.job.name)
    words = remote.submit_words(job_yaml, empty_profile, sweep, after, stage, force, skip_image_check)
    raise typer.Exit(remote.submit(cluster, words, sent=job_yaml.parent))


def _forwarded(command: str, yes: bool = False) -> list[str]:
    """`ft COMMAND ...` as typed, without `--cluster NAME`, for the login node's ft: the words
    it parses are the ones this ft parsed. `yes`: asked here first, so it runs there with --yes."""
    from ftcore.errors import UserError

    argv = sys.argv[1:]
    words = argv[argv.index(command) + 1:] if command in argv else []
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word == "--cluster":
            skip = True
        elif not word.startswith("--cluster="):
            kept.append(word)
    if yes:
        if not sys.stdin.isatty():
            raise UserError("no terminal to confirm on: pass --yes; nothing was submitted")
        if not typer.confirm(f"Run `ft {command} {' '.join(kept)}` on the cluster?", default=True, err=True):
            raise typer.Exit(1)
        kept.append("--yes")
    return [command, *kept]


def _on_cluster(name: str, words: list[str], follow: bool = False) -> None:
    """Run `ft WORDS` on the cluster's login node; its output is ours, and so is its exit status."""
    from launcher import remote

    raise typer.Exit(remote.ft_passthrough(remote.cluster(name), words, follow=follow))


@app.command("train", context_settings={**_PASS_THROUGH, "help_option_names": []}, add_help_option=False)
def train_cmd(ctx: typer.Context) -> None:
    """Train in this process: run by srun in your own batch script (every task), by torchrun, or alone.

    ft train --factory NAME [--job-dir DIR] [--profile FILE] [--yes] [overrides...]; `ft train --help` for more.
    """
    from launcher import train

    raise typer.Exit(train.main(list(ctx.args)))


@app.command("stage", context_settings=_PASS_THROUGH, epilog=OVERRIDES_EPILOG,
             options_metavar="[OPTIONS] [KEY=VALUE]...")
def stage_cmd(
    ctx: typer.Context,
    factory: Optional[str] = FactoryOpt,
    sweep: List[str] = typer.Option([], "--sweep", help="key=v1,v2,...: stage what every task of the sweep names."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval tasks (names, task .yaml files) whose datasets to stage for `ft eval --tasks`."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Download the job's hub model and dataset into the shared cache (hub.cache_dir), on the
    login node, so that compute nodes without internet run it offline."""
    from launcher import config, stage, submit

    if tasks is not None:
        from launcher import evaljob

        for line in evaljob.stage_tasks(tasks, factory, list(ctx.args), profile):
            print(line)
        if factory is None:
            return
    factory, overrides = _factory(factory, list(ctx.args), "stage")
    combos = submit.sweep_overrides(sweep) if sweep else [[]]
    jobs = [config.resolve(factory, [*overrides, *combo], profile).job for combo in combos]
    seen = set()
    for job in jobs:
        for staged in stage.stage(job):
            if staged.folder not in seen:
                seen.add(staged.folder)
                print(staged.line())
    if not seen:
        print("nothing to stage: the job names no hub model or dataset")
        return
    print(f"cache: {stage.cache_dir(jobs[0])}; jobs read it with HF_HUB_OFFLINE=1 when hub.offline is true "
          "(the site profile) or when submitted with --stage")


JobArg = typer.Argument(..., help="Job id, job folder, or a unique prefix of either.")


@app.command("jobs")
def jobs_cmd(
    as_json: bool = typer.Option(False, "--json", help="One JSON list for scripts."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Show at most this many, newest first."),
    show_all: bool = typer.Option(False, "--all", "-a", help="Dry runs too (hidden by default)."),
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Your jobs, newest first: job (SLURM id, else folder name), factory, state, progress, age."""
    import json

    from rich import box
    from rich.table import Table

    from launcher import jobs

    if cluster:
        _on_cluster(cluster, ["jobs", "--limit", str(limit), *["--json"] * as_json, *["--all"] * show_all])

    views, hidden = jobs.newest(limit, with_dry_runs=show_all)  # reads about `limit` folders, not all
    rows = jobs.summary_rows(views)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # 80 columns: what a user types next (`ft status JOB`) is never cut; the rest may wrap.
    table = Table(title=f"ft jobs ({len(rows)}): `ft status JOB` for one", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("job", no_wrap=True)
    table.add_column("factory", overflow="fold")
    table.add_column("state", overflow="fold", min_width=9)
    table.add_column("progress", no_wrap=True)
    table.add_column("age", no_wrap=True)
    for row in rows:
        name = row["id"] or Path(row["folder"]).name
        table.add_row(name, row["factory"], row["state"], row["progress"], row["age"])
    _console(soft_wrap=False, piped_width=200).print(table)
    if hidden:
        print(f"{hidden} dry run(s) not shown: `ft jobs --all` lists them, `ft clean --dry-runs` removes them",
              file=sys.stderr)


@app.command("clean")
def clean_cmd(
    dry_runs: bool = typer.Option(False, "--dry-runs", help="Remove the folders of dry runs (never submitted)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
) -> None:
    """Remove job folders nobody needs: the dry runs' (`--dry-runs`)."""
    from ftcore.errors import UserError
    from launcher import jobs

    if not dry_runs:
        raise UserError("say what to remove: --dry-runs (the folders `ft submit --dry-run` wrote)")
    found = jobs.dry_runs(jobs.all_jobs())
    if not found:
        print("no dry runs to remove")
        return
    for view in found:
        print(view.folder)
    if not yes:
        _confirm(f"Remove these {len(found)} dry-run folder(s)?", "nothing was removed")
    removed = jobs.remove_dry_runs(found)
    print(f"removed {len(removed)} dry-run folder(s)")


@app.command("status")
def status_cmd(job: str = JobArg, cluster: Optional[str] = ClusterOpt) -> None:
    """State of one job (or one sweep task, `ID_TASK`): the scheduler's while it knows the job, then
    the job folder's own record; progress with elapsed and remaining time; newest checkpoint."""
    from ftcore import layout, records
    from launcher import jobs

    if cluster:
        _on_cluster(cluster, ["status", job])

    view = jobs.find(job)
    if view.earlier:  # an earlier submission of a resubmitted folder: its own state first
        print(f"job        {view.earlier} ({view.executor}), an earlier submission of this folder")
        print(f"state      {jobs.earlier_state(view)}")
        print(f"now        {view.label}: `ft status {view.label}` (below)")
    print(f"job        {view.label} ({view.executor})")
    print(f"factory    {view.factory}")
    job_state = jobs.state(view)
    print(f"state      {job_state}")
    if view.is_sweep and view.task is None:
        values = jobs.task_values(view)
        for task, task_state in jobs.task_states(view):
            run = view.folder / layout.TASKS / str(task)
            own = f" | {values[task]}" if values.get(task) else ""
            print(f"  task {task}: {task_state} | {view.progress_detail(run, not jobs.is_finished(task_state))} | "
                  f"checkpoint {view.latest_checkpoint(run) or '-'}{own}  (ft status {view.label}_{task})")
    else:
        print(f"progress   {view.progress_detail(running=not jobs.is_finished(job_state))}")
        print(f"checkpoint {view.latest_checkpoint() or '-'}")
    print(f"folder     {view.run_dirs[0] if view.task is not None else view.folder}")
    events = view.events
    if events:
        starts = sum(1 for e in events if e[records.EVENT] == records.START)
        last = events[-1]
        print(f"runs       {starts} start(s); last event {last[records.EVENT]} at {last.get(records.TIME)}")
    from launcher import evaljob

    for line in evaljob.status_lines(view):  # an evaluation job's task; a run's latest lm-eval scores
        print(line)


@app.command("logs")
def logs_cmd(
    job: str = JobArg,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing while the job runs."),
    rank: Optional[int] = typer.Option(None, "--rank", min=0, help="Only this task's lines."),
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """The job's output; with -f, follow it until the job ends."""
    from launcher import jobs

    if cluster:
        _on_cluster(cluster, ["logs", job, *["--follow"] * follow, *(["--rank", str(rank)] if rank is not None else [])],
                    follow=follow)

    view = jobs.find(job)
    printed = False

    def waiting(state: str) -> None:  # a job that has not started says why, on stderr
        if not printed and state.startswith("PENDING"):
            print(f"ft: job {view.label} is {state}; following its log once it starts", file=sys.stderr, flush=True)

    for line in jobs.log_lines(view, rank, follow, on_state=waiting):
        print(line, flush=True)
        printed = True
    if not printed and not follow:
        print(f"(no output yet in {view.folder / 'logs'})", file=sys.stderr)


@app.command("cancel")
def cancel_cmd(job: str = JobArg, cluster: Optional[str] = ClusterOpt) -> None:
    """Cancel a pending or running job."""
    from launcher import jobs

    if cluster:
        _on_cluster(cluster, ["cancel", job])

    view = jobs.cancel(jobs.find(job))
    print(f"cancelled {view.label} ({view.folder})")


@app.command("resubmit", context_settings=_PASS_THROUGH, epilog=OVERRIDES_EPILOG)
def resubmit_cmd(
    ctx: typer.Context,
    job: str = JobArg,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the script it would submit; change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Submit without asking."),
    executor: Optional[str] = typer.Option(None, "--executor", help="`slurm` or `local` (default: where the job ran)."),
    detach: bool = typer.Option(False, "--detach", help="With --executor local: run in the background."),
    profile: Optional[str] = ProfileOpt,
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Submit a job again in the same folder: it continues from its latest checkpoint.

    Overrides (key=value) apply on top of the folder's config. Every submission is kept in the
    folder's command.txt and submission.json history.
    """
    from ftcore.errors import UserError
    from launcher import jobs, scheduler, submit

    if cluster:
        if executor or detach or profile:
            raise UserError("--cluster resubmits to the cluster's SLURM, with its folder's settings: "
                            "drop --executor, --detach and --profile")
        if not (yes or dry_run):
            _confirm(f"Submit {job} again on {cluster}?", "nothing was submitted")
        from launcher import remote

        words = ["resubmit", job, *(["--dry-run"] if dry_run else ["--yes"]), *ctx.args]
        if dry_run:
            _on_cluster(cluster, words)
        raise typer.Exit(remote.submit(remote.cluster(cluster), words))

    view = jobs.find(job)
    resubmission = submit.prepare_resubmit(view, list(ctx.args), profile, executor, dry_run)
    err = _console(stderr=True)
    _warn(resubmission.warnings, err)
    if dry_run:
        sys.stdout.write(resubmission.script)
        err.print(f"dry run: nothing submitted, nothing changed in {view.folder}")
        return
    _print_summary(submit.Prepared(resubmission.resolved, resubmission.executor), err)
    if not yes:
        _confirm(f"Submit {view.label} again ({resubmission.executor})?",
                 "nothing was submitted, the folder is unchanged")
    earlier = submit.history(jobs.load(view.folder))
    job_id = submit.apply_resubmit(resubmission)  # handed to the scheduler; a job that runs here starts below
    _started(scheduler.get(resubmission.executor), resubmission.job, view.folder, job_id, detach, history=earlier)


def _confirm(question: str, declined: str) -> None:
    """Ask on the terminal; without one, or on "no", stop (exit 1) saying what did not happen."""
    from ftcore.errors import UserError

    if not sys.stdin.isatty():
        raise UserError(f"no terminal to confirm on: pass --yes; {declined}")
    if not typer.confirm(question, default=True, err=True):
        print(f"ft: {declined}", file=sys.stderr)
        raise typer.Exit(1)


def _warn(warnings, console) -> None:
    from rich.markup import escape

    for warning in warnings:
        console.print(f"[bold yellow]ft: warning:[/] {escape(warning)}")


# --- after training -------------------------------------------------------------------------

CkptArg = typer.Argument(..., help="A checkpoint folder, or a job (id, folder, unique prefix): its newest checkpoint.")


def _checkpoint(spec: str):
    from launcher import locate

    return locate.find_checkpoint(spec, make_hf_files=_make_hf_files)


def _make_hf_files(folder: Path) -> None:
    """An intermediate checkpoint keeps only the distributed state: make its model files."""
    print(f"ft: {folder.name} holds only the distributed training state; writing its Hugging Face files "
          "from it (once)", file=sys.stderr)
    from fttools import require_stack

    require_stack()
    from fttools.hf_files import write_hf_files

    write_hf_files(folder)


def _dtype(value: Optional[str]) -> Optional[str]:
    from ftcore import dtypes
    from ftcore.errors import UserError

    if value is not None and value not in dtypes.NAMES:
        raise UserError(f"--dtype {value}: choose one of {', '.join(dtypes.NAMES)}")
    return value


@app.command("merge")
def merge_cmd(
    ckpt: str = CkptArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New folder for the merged model (default: JOB/exports/STEP-merged)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: the base model's dtype)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder (whole, once the new one is written)."),
    cluster: Optional[str] = ClusterOpt,
    executor: Optional[str] = typer.Option(None, "--executor", help="`local` (here, the default) or `slurm`: a short job on one GPU of the cluster, in the job's image."),
    time: Optional[str] = typer.Option(None, "--time", help="--executor slurm: the job's time limit (default 01:00:00)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="--executor slurm: submit without asking."),
) -> None:
    """Fold a LoRA adapter into its base: a plain model folder AutoModelForCausalLM and vLLM load.

    Run again, it keeps a folder it made from the same checkpoint and dtype; --overwrite remakes it.
    """
    if cluster:
        _on_cluster(cluster, _forwarded("merge"))
    dtype = _dtype(dtype)
    from launcher import scheduler

    if executor is not None and not scheduler.get(executor).runs_here:
        _as_job(ckpt, "merge", [*(["--dtype", dtype] if dtype else []), *["--overwrite"] * overwrite], out,
                executor, time, yes)
        return
    checkpoint = _checkpoint(ckpt)
    from fttools import require_stack

    require_stack()
    import time

    from fttools.merge import merge

    started = time.time()
    done = merge(checkpoint, out, dtype, overwrite)
    if done.stat().st_mtime < started:
        print(f"ft: {done} is already this merge, up to date (--overwrite to write it again)", file=sys.stderr)
    print(done)


@app.command("best")
def best_cmd(job: str = JobArg) -> None:
    """Print the kept checkpoint with the lowest validation loss: `ft export $(ft best JOB) --to vllm`."""
    from launcher import locate

    best = locate.best_checkpoint(job)
    print(f"step {best.step}: val_loss {best.val_loss:.4f}", file=sys.stderr)
    if best.note:
        print(f"ft: note: {best.note}", file=sys.stderr)
    print(best.folder)


@app.command("generate")
def generate_cmd(
    ckpt: str = CkptArg,
    prompt: Optional[str] = typer.Argument(None, help="Raw text to continue, exactly as given (no template)."),
    question: Optional[str] = typer.Option(None, "--question", help="squad jobs: the question; the job's prompt format is applied."),
    context: Optional[str] = typer.Option(None, "--context", help="squad jobs: the context passage."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="alpaca jobs: the instruction."),
    input_text: Optional[str] = typer.Option(None, "--input", help="alpaca jobs: the optional input."),
    message: Optional[str] = typer.Option(None, "--message", help="chat (messages) jobs: the user's turn; the tokenizer's chat template is applied."),
    system: Optional[str] = typer.Option(None, "--system", help="chat jobs, with --message: a system message first."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, help="Stop after this many new tokens."),
    cluster: Optional[str] = ClusterOpt,
    executor: Optional[str] = typer.Option(None, "--executor", help="`local` (here, the default) or `slurm`: a short job on one GPU of the cluster, in the job's image."),
    time: Optional[str] = typer.Option(None, "--time", help="--executor slurm: the job's time limit (default 01:00:00)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="--executor slurm: submit without asking."),
) -> None:
    """Greedy answer of a checkpoint (SFT, or base + LoRA adapter), in the prompt format its job trained on.

    `ft generate JOB --question Q --context C` builds the prompt as training did; for a chat
    job, `--message M [--system S]` renders the turn with the tokenizer's chat template; a
    PROMPT argument is continued as raw text.
    """
    from ftcore.errors import UserError

    if cluster:
        _on_cluster(cluster, _forwarded("generate"))
    fields = {k: v for k, v in (("question", question), ("context", context), ("instruction", instruction),
                                ("input", input_text)) if v is not None}
    if system is not None and message is None:
        raise UserError("--system goes with --message (the user's turn of a chat job)")
    modes = sum((bool(fields), prompt is not None, message is not None))
    if modes != 1:
        raise UserError("give one of: the record's fields (--question and --context for a squad job, --instruction "
                        "for an alpaca job), --message for a chat job, or one raw PROMPT" if modes else
                        "nothing to answer: give --question and --context (squad jobs), --instruction (alpaca "
                        "jobs), --message (chat jobs), or a raw PROMPT")
    from launcher import scheduler

    if executor is not None and not scheduler.get(executor).runs_here:
        words = ["--max-new-tokens", str(max_new_tokens), *(["--prompt", prompt] if prompt is not None else []),
                 *(["--message", message] if message is not None else []),
                 *(["--system", system] if system is not None else []),
                 *[word for name, value in fields.items() for word in ("--field", f"{name}={value}")]]
        _as_job(ckpt, "generate", words, None, executor, time, yes)
        return
    checkpoint = _checkpoint(ckpt)
    from fttools import require_stack

    require_stack()
    from fttools.inference import generate, job_prompt

    if fields:
        prompt = job_prompt(checkpoint, fields)
        print(f"prompt: {prompt!r}", file=sys.stderr)
    text = generate(checkpoint, prompt, max_new_tokens, message=message, system=system)
    print(text.strip() if fields or message is not None else text)
    if not text.strip():
        print("(the continuation is empty: the model ended it at once)", file=sys.stderr)


@app.command("eval")
def eval_cmd(
    ckpt: str = CkptArg,
    data: Optional[str] = typer.Option(None, "--data", help="A .json/.jsonl file, ft:NAME (a file ft ships) or a hub dataset (default: the job's data.val_path, else the records it held out by data.val_fraction)."),
    split: str = typer.Option("validation", "--split", help="Split of a hub dataset."),
    fmt: Optional[str] = typer.Option(None, "--format", help="squad, alpaca or jsonl (default: the job's data.format)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N records."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="SQuAD: longest answer generated."),
    loss_only: bool = typer.Option(False, "--loss-only", help="SQuAD: skip generating answers (no EM/F1)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object for scripts."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-evaluation-harness instead: its task names and your task .yaml files, comma-separated (hellaswag,mmlu,./my_task.yaml)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="--tasks: few-shot examples (default: each task's own)."),
    batch_size: str = typer.Option("1", "--batch-size", help="--tasks: lm-eval's batch size: N, auto or auto:N."),
    log_samples: bool = typer.Option(False, "--log-samples", help="--tasks: keep every sample's prompt and answer beside the results."),
    executor: Optional[str] = typer.Option(None, "--executor", help="--tasks: `slurm` (an evaluation job, one GPU, the job's image; the default where the job ran on SLURM) or `local` (here)."),
    time: Optional[str] = typer.Option(None, "--time", help="--tasks --executor slurm: the evaluation job's time limit (default 01:00:00)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="--tasks --executor slurm: submit without asking."),
    dry_run: bool = typer.Option(False, "--dry-run", help="--tasks --executor slurm: print the evaluation job's script; submit nothing."),
    show: bool = typer.Option(False, "--show", help="Print the job's latest lm-eval scores as a table; run nothing."),
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Validation loss on DATA (as training computes it); for SQuAD data, exact match and F1 too.

    With --tasks: lm-evaluation-harness on the checkpoint (a LoRA adapter on its base, no merge);
    the results land in the job's folder, eval/<time>-lm-eval.json.
    """
    import json

    if cluster:
        _on_cluster(cluster, _forwarded("eval", yes=tasks is not None and not show and not yes))
    _one_kind_of_eval(tasks is not None or show, {"--data": data is not None, "--format": fmt is not None,
                                                  "--split": split != "validation", "--loss-only": loss_only,
                                                  "--max-new-tokens": max_new_tokens != 32},
                      {"--num-fewshot": num_fewshot is not None, "--batch-size": batch_size != "1",
                       "--log-samples": log_samples, "--executor": executor is not None, "--time": time is not None,
                       "--dry-run": dry_run})
    if show or tasks is not None:
        _lm_eval(ckpt, tasks, show, limit, num_fewshot, batch_size, log_samples, executor, time, yes, as_json, dry_run)
        return
    checkpoint = _checkpoint(ckpt)  # without --data: the job's validation records (val_path or held out)
    from fttools import require_stack

    require_stack()
    from fttools.evaluate import evaluate

    result = evaluate(checkpoint, data, fmt, limit, max_new_tokens, answers=not loss_only, split=split)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"ft eval: {checkpoint.label}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("data", f"{result['data']} ({result['format']}, {result['examples']} examples)")
    table.add_row("loss", f"{result['loss']:.4f}")
    table.add_row("perplexity", f"{result['perplexity']:.2f}")
    table.add_row("answer tokens", f"{result['answer_tokens']:,}")
    if "preference_accuracy" in result:  # preference pairs: the loss is the chosen answers'
        table.add_row("chosen preferred", f"{result['preference_accuracy']:.1f} %")
    if "exact_match" in result:
        table.add_row("exact match", f"{result['exact_match']:.1f}")
        table.add_row("F1", f"{result['f1']:.1f}")
    _console().print(table)


def _one_kind_of_eval(lm_eval: bool, squad: dict[str, bool], harness: dict[str, bool]) -> None:
    """ft's own eval (loss, SQuAD) and lm-eval's (--tasks) take different options: a mix is refused."""
    from ftcore.errors import UserError

    wrong = [name for name, given in (squad if lm_eval else harness).items() if given]
    if wrong:
        raise UserError(f"{', '.join(wrong)} {'apply' if len(wrong) > 1 else 'applies'} to "
                        + ("ft's own eval (without --tasks)" if lm_eval else "lm-eval's tasks: add --tasks"))


def _lm_eval(spec: str, tasks: Optional[str], show: bool, limit: Optional[int], num_fewshot: Optional[int],
             batch_size: str, log_samples: bool, executor: Optional[str], time: Optional[str], yes: bool,
             as_json: bool, dry_run: bool = False) -> None:
    """`ft eval --tasks` (here, or as an evaluation job) and `ft eval --show`."""
    import json

    from ftcore import evaltasks
    from ftcore.errors import UserError
    from launcher import evaljob

    if show:
        path, results = evaljob.show(spec)
        if as_json:
            print(json.dumps(results, indent=2))
            return
        _print_scores(results, "ft eval: the latest lm-eval scores")
        print(f"results: {path}")
        return
    parsed = evaltasks.parse(tasks)
    options = evaljob.Options(limit, num_fewshot, evaljob.batch_size(batch_size), log_samples)
    executor = executor or evaljob.default_executor(spec)
    from launcher import scheduler

    here = scheduler.get(executor).runs_here
    if dry_run and here:
        raise UserError("--dry-run prints the evaluation job's script: it goes with --executor slurm")
    if not here:
        e = evaljob.prepare(spec, parsed, options, time, executor, dry_run=dry_run)
        if dry_run:
            sys.stdout.write(evaljob.script(e))
            print("dry run: nothing submitted, nothing written", file=sys.stderr)
            return
        err = _console(stderr=True)
        err.print(f"evaluation job: {e.checkpoint} on {parsed.words()}; 1 task, "
                  f"{'1 GPU' if e.job.trainer.accelerator == 'gpu' else 'CPU'}, time limit {e.job.slurm.time}, "
                  f"container {e.job.container.runtime}: {e.job.container.image or 'host Python'}", markup=False)
        if not yes:
            _confirm("Submit this evaluation job?", "nothing was submitted")
        folder = evaljob.write(e, sys.argv)
        job_id = evaljob.submit(e, folder)
        print(f"Submitted batch job {job_id}")
        print(f"Job folder: {folder}")
        print(f"results: {e.out} (`ft eval {spec} --show` once it ends)")
        return
    checkpoint = _checkpoint(spec)
    from fttools.lmeval import evaluate, require_lm_eval

    require_lm_eval()
    out = evaltasks.results_folder(checkpoint.path) / evaltasks.results_name(evaltasks.stamp())
    results = evaluate(checkpoint, parsed, out, limit, num_fewshot,
                       int(options.batch_size) if options.batch_size.isdigit() else options.batch_size,
                       log_samples=log_samples)
    if as_json:
        print(json.dumps({"results": results.get("results"), "file": str(out)}, indent=2, default=str))
        return
    _print_scores(results, f"ft eval: {checkpoint.label} (lm-eval)")
    print(f"results: {out}")


def _as_job(spec: str, tool: str, words: list[str], out: Optional[Path], executor: str, time: Optional[str],
            yes: bool) -> None:
    """`ft merge|export|generate ... --executor slurm`: the command as a short job on a GPU node."""
    from launcher import evaljob

    e = evaljob.prepare_tool(spec, tool, words, out, time, executor)
    _console(stderr=True).print(f"ft {tool} as a job: {e.checkpoint}; 1 task, "
                                f"{'1 GPU' if e.job.trainer.accelerator == 'gpu' else 'CPU'}, time limit "
                                f"{e.job.slurm.time}, container {e.job.container.runtime}: "
                                f"{e.job.container.image or 'host Python'}", markup=False)
    if not yes:
        _confirm(f"Submit this {tool} job?", "nothing was submitted")
    folder = evaljob.write(e, sys.argv)
    job_id = evaljob.submit(e, folder)
    print(f"Submitted batch job {job_id}")
    print(f"Job folder: {folder}")
    print(f"follow it with: ft logs {job_id} -f" + (f"; it writes {e.out}" if e.out else ""))


def _print_scores(results: dict, title: str) -> None:
    from rich.table import Table

    from ftcore import evaltasks

    table = Table(title=title, title_justify="left")
    for column in ("task", "metric", "value", "stderr"):
        table.add_column(column, justify="right" if column in ("value", "stderr") else "left")
    for row in evaltasks.scores(results):
        table.add_row(*row)
    _console(soft_wrap=False).print(table)


@app.command("export")
def export_cmd(
    ckpt: str = CkptArg,
    to: str = typer.Option(..., "--to", help="Serving engine: vllm."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New folder (default: JOB/exports/STEP-vllm[-lora])."),
    merge: bool = typer.Option(False, "--merge", help="LoRA: fold the adapter into its base first."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="With --merge: bf16, fp16 or fp32."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder (whole, once the new one is written)."),
    cluster: Optional[str] = ClusterOpt,
    executor: Optional[str] = typer.Option(None, "--executor", help="`local` (here, the default) or `slurm`: a short job on one GPU of the cluster, in the job's image."),
    time: Optional[str] = typer.Option(None, "--time", help="--executor slurm: the job's time limit (default 01:00:00)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="--executor slurm: submit without asking."),
) -> None:
    """A folder vLLM serves (model, or LoRA adapter), with the exact `vllm serve` command."""
    if cluster:
        _on_cluster(cluster, _forwarded("export"))
    dtype = _dtype(dtype)
    from launcher import scheduler

    if executor is not None and not scheduler.get(executor).runs_here:
        _as_job(ckpt, "export", ["--to", to, *["--merge"] * merge, *(["--dtype", dtype] if dtype else []),
                                 *["--overwrite"] * overwrite], out, executor, time, yes)
        return
    from fttools import export, require_stack

    checkpoint = _checkpoint(ckpt)
    if merge:
        require_stack()
    done = export.export(checkpoint, to, out, merge, dtype, overwrite)
    err = _console(stderr=True)
    if done.up_to_date:
        err.print(f"ft: {done.out} is already this export, up to date (--overwrite to write it again)", markup=False)
    for warning in done.warnings:
        err.print(f"[bold yellow]ft: warning:[/] {warning}", markup=True, highlight=False)
    print(done.out)
    print(f"serve it with: {done.command}")


@app.command("push")
def push_cmd(
    ckpt: str = CkptArg,
    repo_id: str = typer.Argument(..., help="Hub repository OWNER/NAME (created if it does not exist)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded, with sizes; upload nothing."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    cluster: Optional[str] = ClusterOpt,
) -> None:
    """Upload a checkpoint or export to the Hugging Face Hub (token: $HF_TOKEN only).

    With --cluster the login node uploads, with the HF_TOKEN of its own environment: ft never
    sends a token over ssh."""
    if cluster:
        _on_cluster(cluster, _forwarded("push"))
    from launcher import push

    upload = push.prepare(_checkpoint(ckpt), repo_id)
    err = _console(stderr=True)
    for warning in upload.warnings:
        err.print(f"ft: warning: {warning}", markup=False)
    if dry_run:
        for name, size in upload.files:
            print(f"{push.human_size(size):>10}  {name}")
        print(f"{push.human_size(upload.total_bytes):>10}  total: {len(upload.files)} file(s) from {upload.folder} "
              f"to {repo_id}{' (private)' if private else ''}; dry run, nothing uploaded")
        return
    print(push.push(upload, private))


@app.command("plot")
def plot_cmd(
    job: List[str] = typer.Argument(..., help="Jobs (id, folder or unique prefix); several share one figure."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default: JOB/metrics.png, or ./ft-plot.png for several)."),
    cluster: Optional[str] = ClusterOpt,
    list_runs: bool = typer.Option(False, "--list-runs", hidden=True, help="Print the runs as JSON; draw nothing."),
) -> None:
    """Loss (train and validation), learning rate, tokens/s and memory against the step, as a PNG.

    With --cluster only the metrics it draws come over; the PNG is written here."""
    import json

    from launcher import plot

    if cluster:
        from launcher import remote

        print(remote.plot(remote.cluster(cluster), list(job), out))
        return
    if list_runs:
        print(json.dumps(plot.list_runs(list(job))))
        return
    print(plot.plot(list(job), out))


@app.command("plan", context_settings=_PASS_THROUGH, epilog=OVERRIDES_EPILOG,
             options_metavar="[OPTIONS] [KEY=VALUE]...")
def plan_cmd(
    ctx: typer.Context,
    factory: Optional[str] = FactoryOpt,
    gpu_memory: Optional[float] = typer.Option(None, "--gpu-memory", help="Memory of one GPU in GiB (default: trainer.gpu_memory_gib, a site setting)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object for scripts."),
    rank: int = typer.Option(0, "--rank", min=0, help="Price this rank's shards (rank 0 holds the largest)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Memory per GPU as the trainer's policy builds it: fits? If not, the smallest allocation that does, and the levers."""
    import json

    from rich.table import Table

    from ftcore.errors import UserError
    from launcher import config, plan

    if gpu_memory is not None and (not gpu_memory > 0 or gpu_memory == float("inf")):
        raise UserError(f"--gpu-memory {gpu_memory}: give one GPU's memory in GiB, a positive number like 80")
    factory, args = _factory(factory, list(ctx.args), "plan")
    job = config.resolve(factory, args, profile).job
    est = plan.estimate(job, gpu_memory, rank=rank)
    if as_json:
        fit = plan.smallest_fit(job, est.gpu_gib) if est.on_gpu else None
        smallest = {"num_nodes": fit.num_nodes, "devices": fit.devices, "strategy": fit.strategy} if fit else None
        path = plan.attention(job)
        timed = plan.timing(job, est)
        print(json.dumps({**est.as_dict(), "smallest_fit": smallest, "time": plan.timing_dict(job, timed),
                          "attention": {"name": path.name, "padding_free": path.padding_free,
                                        "packing": path.packing, "reason": path.reason}}, indent=2))
        return
    scale, unit = (plan.GIB, "GiB") if est.total >= plan.GIB else (2**20, "MiB")
    unit += " per GPU" if est.on_gpu else ""
    method = f"LoRA r={job.peft.dim}" if job.peft else "full SFT"
    title = (f"ft plan: {job.name} | {method} | {plan.count(est.params)} params ({est.dims.source}) | "
             f"{est.strategy} on {est.num_nodes}×{est.devices} | micro batch {job.data.micro_batch_size} × "
             f"{job.data.max_seq_length} tokens | {job.model.dtype}")
    table = Table(title=title, title_justify="left")
    table.add_column("component")
    table.add_column(unit, justify="right")
    table.add_column("priced")
    table.add_column("how")
    for row in est.rows:
        name = row.name if row.on_device else f"{row.name} (host memory)"
        table.add_row(name, f"{row.bytes / scale:.2f}", "exact" if row.exact else "estimate", row.how)
    table.add_row("total", f"{est.total / scale:.2f}", "", style="bold")
    console = _console()
    console.print(table)
    for line in ["policy: " + "; ".join(est.decision.describe()), plan.attention(job).describe(), *est.notes,
                 *plan.time_lines(job, est), *plan.verdict(est, job)]:
        console.print(line, markup=False)


image_app = typer.Typer(help="Container images: check one against the image contract, pull a URI once.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(image_app, name="image")
RuntimeOpt = typer.Option(None, "--runtime", help="apptainer, singularity or pyxis (default: the profile's, else the one on PATH).")


def _container(image: str, runtime: str | None, profile: str | None, **fields):
    """The profile's container settings for `image`, with the runtime to use here."""
    from ftcore.errors import UserError
    from ftcore.schema import ContainerConfig
    from launcher import config, image as images, runtime as runtimes

    settings = dict(config.load_profile(profile)[0].get("container") or {})
    settings.update(image=image, **{k: v for k, v in fields.items() if v is not None})
    wanted = runtime or settings.get("runtime")
    if wanted and not runtimes.get(wanted).contained:
        wanted = None  # a bare-metal profile: the image is checked with the runtime found here
    found = images.find_runtime(wanted)
    if found is None and not wanted:
        raise UserError("neither apptainer nor singularity is on PATH here",
                        hint="run this where the container runtime is installed (often the login node, "
                             "or a compute node through srun)")
    settings["runtime"] = found or wanted
    try:
        return ContainerConfig(**settings)
    except ValueError as err:
        raise UserError(f"container settings: {err}") from None


@image_app.command("check")
def image_check_cmd(
    image: str = typer.Argument(..., help="A .sif or .sqsh file, a sandbox folder, or a URI (pulled before with `ft image pull`, or for pyxis imported by the check's srun)."),
    runtime: Optional[str] = RuntimeOpt,
    python: Optional[str] = typer.Option(None, "--python", help="The image's Python (default: `python`)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Run the image contract's import check inside IMAGE: Python, torch, CUDA, packages; exit 2 if the trainer cannot run there."""
    from ftcore.errors import UserError
    from launcher import image as images

    from launcher import runtime as runtimes

    container = _container(image, runtime, profile, python=python)
    rt = runtimes.of(container)
    local = rt.image_to_run(container)
    if rt.is_uri(image) and rt.cached(container).is_file():
        images.check_trusted(container, Path(local))
    elif rt.needs_pull(container) and not rt.imports_at_start:
        raise UserError(f"{image} is not pulled yet", hint=f"ft image pull {image}")
    report = images.check(container, local)
    print("\n".join(report.lines()))
    if report.problems:
        raise images.failure(report)
    print("ok: this image can run ft's trainer")


@image_app.command("pull")
def image_pull_cmd(
    uri: str = typer.Argument(..., help="docker://, oras:// or library:// image (pyxis: docker:// or enroot's REGISTRY#IMAGE)."),
    runtime: Optional[str] = RuntimeOpt,
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Where SIF files are kept (default: container.cache_dir, else $FT_HOME/images)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Convert a URI image to a SIF (pyxis: enroot import to .sqsh) once, into the image cache (locked, atomic); print its path."""
    from launcher import image as images

    container = _container(uri, runtime, profile, cache_dir=cache_dir)
    path, pulled = images.pull(uri, images.cache_dir(container), container.runtime, echo=images.echo_stderr)
    if not pulled:
        images.check_trusted(container, path)
        _console(stderr=True).print(f"{uri} was pulled before")
    print(path)


def _print_summary(prepared, console) -> None:
    from rich.table import Table

    from launcher import submit

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in submit.summary(prepared):
        table.add_row(key, value)
    console.print(table)


def main() -> None:
    """Entry point: user mistakes print as `ft: error: ...` with exit status 2, never a traceback."""
    from ftcore.errors import UserError

    try:
        app(prog_name="ft")  # also under `python -m launcher`: completion and usage say `ft`
    except UserError as err:
        for note in getattr(err, "notes", ()):  # e.g. an AutoModel recipe's translation, before its problems
            print(note if note.startswith("  ") else f"ft: {note}", file=sys.stderr)
        _report(err.problems, err.hint)
        sys.exit(err.exit_code)
    except OSError as err:
        # The machine said no (a read-only or full FT_HOME, a permission, a name too long):
        # the user's to act on, said in one line.
        import errno

        from ftcore import exits

        where = f" {err.filename}" if err.filename else " a file"
        hint = {errno.ENOSPC: "free some space, or point FT_HOME at another filesystem",
                errno.EDQUOT: "free some space, or point FT_HOME at another filesystem",
                errno.EROFS: "point FT_HOME at a writable folder",
                errno.EACCES: "check the permissions, or point FT_HOME at a folder of yours"}.get(err.errno)
        _report([f"cannot use{where}: {err.strerror or err}"], hint)
        sys.exit(exits.USER_ERROR)


def _report(problems: list[str], hint: str | None) -> None:
    from rich.markup import escape

    console = _console(stderr=True)
    for problem in problems:
        console.print(f"[bold red]ft: error:[/] {escape(problem)}", highlight=False)
    if hint:
        console.print(f"ft: hint: {escape(hint)}", highlight=False)


if __name__ == "__main__":
    main()
