"""ft: launch LoRA and full SFT fine-tuning jobs on SLURM, inside Singularity/Apptainer.

    ft factories
    ft show   --factory llama31_8b trainer.max_steps=250 [--explain]
    ft submit --factory llama31_8b trainer.max_steps=250 data.global_batch_size=8 --yes
    ft submit --factory tiny --executor local
    srun ft train --factory llama31_8b trainer.devices="${SLURM_GPUS_PER_NODE}"   # in your own script
    ft stage  --factory llama32_1b_squad                # hub model + dataset → shared cache
    ft plan   --factory llama3_8b_sft                   # GPU memory per GPU: does it fit?
    ft merge JOB ; ft generate JOB "prompt" ; ft eval JOB --data val.jsonl
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
    from ftcore import schema
    from launcher import config, explain as explain_mod

    resolved = config.resolve(factory, list(ctx.args), profile)
    if explain:
        sys.stdout.write(explain_mod.explain(resolved.job))
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(schema.job_to_dict(resolved.job), sort_keys=False))


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
    skip_image_check: bool = typer.Option(False, "--skip-image-check", help="Do not run the image contract check in the container image."),
    print_srun: bool = typer.Option(False, "--print-srun", help="With --dry-run: print only the srun line that "
                                    "runs this job with `ft train` in your own batch script; write nothing."),
    force: bool = typer.Option(False, "--force", help="Submit even though `ft plan` says it will not fit its GPUs."),
    stage: bool = typer.Option(False, "--stage", help="First download the job's hub model and dataset into the shared cache (as `ft stage`); the job then runs offline."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Resolve, validate, write the job folder, render the sbatch script and submit it."""
    from rich.markup import escape

    from ftcore.errors import UserError
    from launcher import image, submit

    if print_srun and (not dry_run or sweep or after or executor != "slurm"):
        raise UserError("--print-srun prints one job's srun line for your own script and submits nothing: "
                        "use it with --dry-run, without --sweep, --after or --executor local")
    p = submit.prepare(factory, list(ctx.args), profile, executor, dry_run, sweep, after, stage, force)
    err = _console(stderr=True)
    for staged in p.staged:
        err.print(staged.line(), markup=False)
    for warning in p.warnings:
        err.print(f"[bold yellow]ft: warning:[/] {escape(warning)}")
    for note in p.notes:
        err.print(note, markup=False)
    if print_srun:
        line, header = submit.srun_line(p, factory)
        err.print("# the allocation this line expects (one task per GPU):\n" + "\n".join(header), markup=False)
        print(line)
        return
    if not dry_run:
        _print_summary(p, err)
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("no terminal to confirm on: pass --yes to submit without asking "
                                "(or --dry-run to only write and print the script)")
            if not typer.confirm("Submit this job?", default=True, err=True):
                raise typer.Exit(1)
        for note in submit.ready_image(p.job, skip_image_check, echo=image.echo_stderr):
            err.print(note)
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
    job_id = submit.submit(folder, p.job.name, job_name=p.job.job_name)
    print(f"Submitted batch job {job_id}")
    print(f"Job folder: {folder}")


@app.command("train", context_settings={**_PASS_THROUGH, "help_option_names": []}, add_help_option=False)
def train_cmd(ctx: typer.Context) -> None:
    """Train in this process: run by srun in your own batch script (every task), by torchrun, or alone.

    ft train --factory NAME [--job-dir DIR] [--profile FILE] [--yes] [overrides...]; `ft train --help` for more.
    """
    from launcher import train

    raise typer.Exit(train.main(list(ctx.args)))


@app.command("stage", context_settings=_PASS_THROUGH)
def stage_cmd(
    ctx: typer.Context,
    factory: str = FactoryOpt,
    sweep: List[str] = typer.Option([], "--sweep", help="key=v1,v2,...: stage what every task of the sweep names."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Download the job's hub model and dataset into the shared cache (hub.cache_dir), on the
    login node, so that compute nodes without internet run it offline."""
    from launcher import config, stage, submit

    overrides = list(ctx.args)
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
        scheduled = row["executor"] in jobs.SCHEDULED_EXECUTORS
        table.add_row(str(row["id"] or "-" if scheduled else row["executor"]), row["factory"],
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
    rank: Optional[int] = typer.Option(None, "--rank", min=0, help="Only this task's lines."),
) -> None:
    """The job's output; with -f, follow it until the job ends."""
    from launcher import jobs

    view = jobs.find(job)
    printed = False
    for line in jobs.log_lines(view, rank, follow):
        print(line, flush=True)
        printed = True
    if not printed and not follow:
        print(f"(no output yet in {view.folder / 'logs'})", file=sys.stderr)


@app.command("cancel")
def cancel_cmd(job: str = JobArg) -> None:
    """Cancel a pending or running job."""
    from launcher import jobs

    view = jobs.cancel(jobs.find(job))
    print(f"cancelled {view.job_id or view.folder.name} ({view.folder})")


@app.command("resubmit", context_settings=_PASS_THROUGH)
def resubmit_cmd(ctx: typer.Context, job: str = JobArg, profile: Optional[str] = ProfileOpt) -> None:
    """Submit a job again in the same folder: it continues from its latest checkpoint."""
    from launcher import jobs, submit

    view = jobs.find(job)
    job_id = submit.resubmit(view, list(ctx.args), profile)
    print(f"Submitted batch job {job_id}")
    print(f"Job folder: {view.folder}")


# --- after training -------------------------------------------------------------------------

CkptArg = typer.Argument(..., help="A checkpoint folder, or a job (id, folder, unique prefix): its newest checkpoint.")
DTYPE_CHOICES = ("bf16", "fp16", "fp32")


def _checkpoint(spec: str):
    from launcher import locate

    return locate.find_checkpoint(spec, make_hf_files=_make_hf_files)


def _make_hf_files(folder: Path) -> None:
    """An intermediate checkpoint keeps only the distributed state: make its model files."""
    print(f"ft: {folder.name} holds only the distributed training state; writing its Hugging Face files "
          "from it (once)", file=sys.stderr)
    from fttools import require_stack

    require_stack()
    from fttools.distributed import write_hf_files

    write_hf_files(folder)


def _dtype(value: Optional[str]) -> Optional[str]:
    from ftcore.errors import UserError

    if value is not None and value not in DTYPE_CHOICES:
        raise UserError(f"--dtype {value}: choose one of {', '.join(DTYPE_CHOICES)}")
    return value


@app.command("merge")
def merge_cmd(
    ckpt: str = CkptArg,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New folder for the merged model (default: JOB/exports/STEP-merged)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: the base model's dtype)."),
) -> None:
    """Fold a LoRA adapter into its base: a plain model folder AutoModelForCausalLM and vLLM load."""
    checkpoint = _checkpoint(ckpt)
    dtype = _dtype(dtype)
    from fttools import require_stack

    require_stack()
    from fttools.merge import merge

    print(merge(checkpoint, out, dtype))


@app.command("generate")
def generate_cmd(
    ckpt: str = CkptArg,
    prompt: str = typer.Argument(..., help="Text to continue, as the model saw prompts in training."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, help="Stop after this many new tokens."),
) -> None:
    """Greedy continuation of PROMPT by a checkpoint (SFT, or base + LoRA adapter)."""
    checkpoint = _checkpoint(ckpt)
    from fttools import require_stack

    require_stack()
    from fttools.inference import generate

    text = generate(checkpoint, prompt, max_new_tokens)
    print(text)
    if not text.strip():
        print("(the continuation is empty: the model ended it at once)", file=sys.stderr)


@app.command("eval")
def eval_cmd(
    ckpt: str = CkptArg,
    data: str = typer.Option(..., "--data", help="A .json/.jsonl file, ft:NAME (a file ft ships) or a hub dataset."),
    split: str = typer.Option("validation", "--split", help="Split of a hub dataset."),
    fmt: Optional[str] = typer.Option(None, "--format", help="squad, alpaca or jsonl (default: the job's data.format)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N records."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="SQuAD: longest answer generated."),
    loss_only: bool = typer.Option(False, "--loss-only", help="SQuAD: skip generating answers (no EM/F1)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object for scripts."),
) -> None:
    """Validation loss on DATA (as training computes it); for SQuAD data, exact match and F1 too."""
    import json

    checkpoint = _checkpoint(ckpt)
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
    if "exact_match" in result:
        table.add_row("exact match", f"{result['exact_match']:.1f}")
        table.add_row("F1", f"{result['f1']:.1f}")
    _console().print(table)


@app.command("export")
def export_cmd(
    ckpt: str = CkptArg,
    to: str = typer.Option(..., "--to", help="Serving engine: vllm."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New folder (default: JOB/exports/STEP-vllm[-lora])."),
    merge: bool = typer.Option(False, "--merge", help="LoRA: fold the adapter into its base first."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="With --merge: bf16, fp16 or fp32."),
) -> None:
    """A folder vLLM serves (model, or LoRA adapter), with the exact `vllm serve` command."""
    from fttools import export, require_stack

    checkpoint = _checkpoint(ckpt)
    dtype = _dtype(dtype)
    if merge:
        require_stack()
    done = export.export(checkpoint, to, out, merge, dtype)
    err = _console(stderr=True)
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
) -> None:
    """Upload a checkpoint or export to the Hugging Face Hub (token: $HF_TOKEN only)."""
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
) -> None:
    """Loss (train and validation), learning rate, tokens/s and memory against the step, as a PNG."""
    from launcher import plot

    print(plot.plot(list(job), out))


@app.command("plan", context_settings=_PASS_THROUGH)
def plan_cmd(
    ctx: typer.Context,
    factory: str = FactoryOpt,
    gpu_memory: float = typer.Option(80.0, "--gpu-memory", help="Memory of one GPU in GiB."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object for scripts."),
    rank: int = typer.Option(0, "--rank", min=0, help="Price this rank's shards (rank 0 holds the largest)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Memory per GPU as the trainer's policy builds it: fits? If not, the smallest allocation that does, and the levers."""
    import json

    from rich.table import Table

    from ftcore.errors import UserError
    from launcher import config, plan

    if not gpu_memory > 0 or gpu_memory == float("inf"):
        raise UserError(f"--gpu-memory {gpu_memory}: give one GPU's memory in GiB, a positive number like 80")
    job = config.resolve(factory, list(ctx.args), profile).job
    est = plan.estimate(job, gpu_memory, rank=rank)
    if as_json:
        fit = plan.smallest_fit(job, gpu_memory) if est.on_gpu else None
        smallest = {"num_nodes": fit.num_nodes, "devices": fit.devices, "strategy": fit.strategy} if fit else None
        print(json.dumps({**est.as_dict(), "smallest_fit": smallest}, indent=2))
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
    for line in ["policy: " + "; ".join(est.decision.describe()), *est.notes, *plan.verdict(est, job)]:
        console.print(line, markup=False)


image_app = typer.Typer(help="Container images: check one against the image contract, pull a URI once.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(image_app, name="image")
RuntimeOpt = typer.Option(None, "--runtime", help="apptainer or singularity (default: the profile's, else the one on PATH).")


def _container(image: str, runtime: str | None, profile: str | None, **fields):
    """The profile's container settings for `image`, with the runtime to use here."""
    from ftcore.errors import UserError
    from ftcore.schema import ContainerConfig
    from launcher import config, image as images

    settings = dict(config.load_profile(profile)[0].get("container") or {})
    settings.update(image=image, **{k: v for k, v in fields.items() if v is not None})
    wanted = runtime or (settings.get("runtime") if settings.get("runtime") not in (None, "none") else None)
    found = images.find_runtime(wanted)
    if found is None:
        raise UserError(f"{wanted or 'neither apptainer nor singularity'} is not on PATH here",
                        hint="run this where the container runtime is installed (often the login node, "
                             "or a compute node through srun)")
    settings["runtime"] = found
    try:
        return ContainerConfig(**settings)
    except ValueError as err:
        raise UserError(f"container settings: {err}") from None


@image_app.command("check")
def image_check_cmd(
    image: str = typer.Argument(..., help="A .sif file, a sandbox folder, or a URI pulled before with `ft image pull`."),
    runtime: Optional[str] = RuntimeOpt,
    python: Optional[str] = typer.Option(None, "--python", help="The image's Python (default: `python`)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Run the image contract's import check inside IMAGE: Python, torch, CUDA, packages; exit 2 if the trainer cannot run there."""
    from ftcore.errors import UserError
    from launcher import image as images

    container = _container(image, runtime, profile, python=python)
    local = images.image_to_run(container)
    if images.is_uri(image) and not Path(local).is_file():
        raise UserError(f"{image} is not pulled yet", hint=f"ft image pull {image}")
    report = images.check(container, local)
    print("\n".join(report.lines()))
    if report.problems:
        raise images.failure(report)
    print("ok: this image can run ft's trainer")


@image_app.command("pull")
def image_pull_cmd(
    uri: str = typer.Argument(..., help="docker://, oras:// or library:// image."),
    runtime: Optional[str] = RuntimeOpt,
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Where SIF files are kept (default: container.cache_dir, else $FT_HOME/images)."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Convert a URI image to a SIF once, into the image cache (locked, atomic); print its path."""
    from launcher import image as images

    container = _container(uri, runtime, profile, cache_dir=cache_dir)
    path, pulled = images.pull(uri, images.cache_dir(container), container.runtime, echo=images.echo_stderr)
    if not pulled:
        _console(stderr=True).print(f"{uri} was pulled before")
    print(path)


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
    from ftcore.errors import UserError

    try:
        app()
    except UserError as err:
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
