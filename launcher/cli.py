"""ft: launch LoRA and full SFT fine-tuning jobs on SLURM, inside Singularity/Apptainer.

    ft factories
    ft show   --factory llama31_8b trainer.max_steps=250 [--explain]
    ft submit --factory llama31_8b trainer.max_steps=250 data.global_batch_size=8 --yes
    ft submit --factory tiny --executor local

The CLI only parses and prints; each command calls library functions that tests call
directly. Heavy modules (torch, transformers, peft) are never imported here, and even the
launcher's own modules load lazily so that `ft --help` stays instant.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import os

# ft has no pydantic plugins; looking for them costs a scan of every installed package.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # noqa: E402

app = typer.Typer(
    name="ft",
    help="Launch LoRA and full SFT fine-tuning jobs on SLURM clusters inside containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

OVERRIDES_HELP = "Overrides as key=value in dot notation, e.g. trainer.max_steps=250 optim.lr=1e-4."
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}

FactoryOpt = typer.Option(..., "--factory", "-f", help="Factory name (see `ft factories`) or path to a YAML file.")
ProfileOpt = typer.Option(None, "--profile", help="Cluster profile YAML (default: $FT_PROFILE or ~/.config/ft/cluster.yaml).")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


@app.command("factories")
def factories_cmd() -> None:
    """List the built-in factories and those in your factory folders."""
    from rich.table import Table

    from launcher import config

    table = Table(title="ft factories", title_justify="left")
    for column in ("name", "model", "method", "GPUs", "purpose", "source"):
        table.add_column(column)
    for info in config.list_factories():
        if info.error:
            table.add_row(info.name, "", "", "", f"[broken] {info.error}", info.source)
            continue
        data = info.data
        model = data.get("model") or {}
        trainer = data.get("trainer") or {}
        method = "SFT" if config.normalise_switches(data).get("peft", {}) is None else "LoRA"
        gpus = f"{trainer.get('num_nodes', 1)}×{trainer.get('devices', 1)}"
        if trainer.get("accelerator") == "cpu":
            gpus += " CPU"
        name_or_init = model.get("path") or f"random {model.get('config', {}).get('model_type', '')}".strip()
        table.add_row(info.name, str(name_or_init), method, gpus, str(data.get("description", "")), info.source)
    _console().print(table)


@app.command("show", context_settings=_PASS_THROUGH)
def show_cmd(
    ctx: typer.Context,
    factory: str = FactoryOpt,
    explain: bool = typer.Option(False, "--explain", help="Print each field's description and default."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Print the fully resolved job as YAML: every field, after factory < profile < overrides."""
    from launcher import config, explain as explain_mod

    resolved = config.resolve(factory, list(ctx.args), profile)
    if explain:
        sys.stdout.write(explain_mod.explain(resolved.job))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(config.job_to_dict(resolved.job), sort_keys=False))


@app.command("submit", context_settings=_PASS_THROUGH)
def submit_cmd(
    ctx: typer.Context,
    factory: str = FactoryOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Write the job folder and print the script; never call sbatch."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Submit without asking."),
    executor: str = typer.Option("slurm", "--executor", help="`slurm` (sbatch) or `local` (run here, no scheduler)."),
    detach: bool = typer.Option(False, "--detach", help="With --executor local: run in the background."),
    sweep: List[str] = typer.Option([], "--sweep", help="key=v1,v2,...: one SLURM array task per value (repeat for a grid)."),
    after: Optional[str] = typer.Option(None, "--after", help="Start only after this job completed successfully (afterok)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Resolve, validate, write the job folder, render the sbatch script and submit it."""
    from launcher import submit
    from launcher.errors import UserError

    after_id = None
    if after:
        from launcher import jobs

        after_id = jobs.find(after).job_id
        if not after_id:
            raise UserError(f"--after {after}: that job was never submitted to SLURM")
    p = submit.plan(factory, list(ctx.args), profile, executor, dry_run, sweep, after_id)
    err = _console(stderr=True)
    if not dry_run:
        _print_summary(p, err)
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("no terminal to confirm on: pass --yes to submit without asking "
                                "(or --dry-run to only write and print the script)")
            if not typer.confirm("Submit this job?", default=True, err=True):
                raise typer.Exit(1)
    folder = submit.write(p)
    if dry_run:
        sys.stdout.write((folder / "job.sbatch").read_text())
        err.print(f"dry run: nothing submitted. Job folder: {folder}")
        return
    if executor == "local":
        from launcher import local

        err.print(f"Job folder: {folder}")
        status = local.run(p.job, folder, detach=detach)
        if detach:
            err.print(f"running in the background; follow with: ft logs {folder} -f")
        raise typer.Exit(status)
    job_id = submit.submit(folder, p.job.name)
    print(f"Submitted batch job {job_id}")
    print(f"Job folder: {folder}")


JobArg = typer.Argument(..., help="Job id, job folder, or a unique prefix of either.")


@app.command("jobs")
def jobs_cmd(
    as_json: bool = typer.Option(False, "--json", help="One JSON list for scripts."),
    limit: int = typer.Option(50, "--limit", "-n", help="Show at most this many, newest first."),
) -> None:
    """Your jobs, newest first: id, factory, state, progress, age, folder."""
    import json

    from rich.table import Table

    from launcher import jobs

    rows = jobs.summary_rows(jobs.all_jobs()[:limit])
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"ft jobs ({len(rows)})", title_justify="left")
    for column in ("id", "factory", "state", "progress", "age", "folder"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row["id"] or "-" if row["executor"] == "slurm" else row["executor"]), row["factory"],
                      row["state"], row["progress"], row["age"], row["folder"])
    _console().print(table)


@app.command("status")
def status_cmd(job: str = JobArg) -> None:
    """State of one job: the scheduler's while it knows the job, then the job folder's own record."""
    from launcher import jobs

    view = jobs.find(job)
    state = jobs.state(view)
    events = view.events
    print(f"job        {view.job_id or '-'} ({view.executor})")
    print(f"factory    {view.factory}")
    print(f"state      {state}")
    print(f"progress   {view.progress()}")
    print(f"checkpoint {view.latest_checkpoint() or '-'}")
    print(f"folder     {view.folder}")
    if events:
        starts = sum(1 for e in events if e["event"] == "start")
        last = events[-1]
        print(f"runs       {starts} start(s); last event {last['event']} at {last.get('time')}")


@app.command("logs")
def logs_cmd(
    job: str = JobArg,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing while the job runs."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Only this task's lines."),
) -> None:
    """The job's output; with -f, follow it until the job ends."""
    import time

    from launcher import jobs
    from launcher.errors import UserError

    view = jobs.find(job)
    if view.executor == "dry-run":
        raise UserError(f"{view.folder.name} is a dry run: it has no logs (submit it with `ft resubmit {view.folder}`)")
    offsets: dict = {}

    def drain() -> None:
        files = jobs.log_files(view)
        if view.executor == "local" and rank is not None:
            files = [f for f in files if f.name == f"rank-{rank}.out"]
        for path in files:
            with open(path, "rb") as handle:
                handle.seek(offsets.get(path, 0))
                data = handle.read()
                # Keep a partial last line for the next round.
                cut = data.rfind(b"\n") + 1 if follow else len(data)
                offsets[path] = offsets.get(path, 0) + cut
            lines = data[:cut].decode(errors="replace").splitlines()
            if view.executor == "slurm":
                lines = jobs.select_rank(lines, rank)
            for line in lines:
                print(line, flush=True)

    drain()
    if not jobs.log_files(view) and not follow:
        print(f"(no output yet in {view.folder / 'logs'})", file=sys.stderr)
    while follow:
        finished = jobs.is_finished(jobs.state(view))
        drain()
        if finished:
            break
        time.sleep(1)


@app.command("cancel")
def cancel_cmd(job: str = JobArg) -> None:
    """Cancel a pending or running job."""
    import os
    import signal

    from launcher import jobs, slurm
    from launcher.errors import UserError

    view = jobs.find(job)
    state = jobs.state(view)
    if jobs.is_finished(state):
        raise UserError(f"job {view.job_id or view.folder.name} already ended ({state}): nothing to cancel")
    if view.executor == "local":
        # pids[0] is the process that watches the tasks and records their exit: spare it.
        pids = view.record.get("pids", [])
        for pid in pids[1:] or pids:
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
    else:
        slurm.scancel(view.job_id)
    print(f"cancelled {view.job_id or view.folder.name} ({view.folder})")


@app.command("resubmit", context_settings=_PASS_THROUGH)
def resubmit_cmd(ctx: typer.Context, job: str = JobArg, profile: Optional[str] = ProfileOpt) -> None:
    """Submit a job again in the same folder: it continues from its latest checkpoint."""
    from launcher import jobs, submit

    view = jobs.find(job)
    job_id = submit.resubmit(view, list(ctx.args), profile)
    print(f"Submitted batch job {job_id}")
    print(f"Job folder: {view.folder}")


def _print_summary(p, console) -> None:
    from rich.table import Table

    from launcher import submit

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in submit.summary(p):
        table.add_row(key, value)
    console.print(table)


def main() -> None:
    """Entry point: user mistakes print as `ft: error: ...` with exit status 2, never a traceback."""
    from launcher.errors import UserError

    try:
        app()
    except UserError as err:
        from rich.markup import escape

        console = _console(stderr=True)
        for problem in err.problems:
            console.print(f"[bold red]ft: error:[/] {escape(problem)}", highlight=False)
        if err.hint:
            console.print(f"ft: hint: {escape(err.hint)}")
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
