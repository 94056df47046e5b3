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

import typer

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
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Resolve, validate, write the job folder, render the sbatch script and submit it."""
    from launcher import local, submit
    from launcher.errors import UserError

    p = submit.plan(factory, list(ctx.args), profile, executor, dry_run)
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
        err.print(f"Job folder: {folder}")
        status = local.run(p.job, folder, detach=detach)
        if detach:
            err.print(f"running in the background; follow with: ft logs {folder} -f")
        raise typer.Exit(status if status >= 0 else 128 - status)
    job_id = submit.submit(folder, p.job.name)
    print(f"Submitted batch job {job_id}")
    print(f"Job folder: {folder}")


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
