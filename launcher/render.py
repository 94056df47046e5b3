"""Render a job into an sbatch script.

Every value is computed and shell-quoted here, in Python; the Jinja template only places
what it is given (StrictUndefined, loops over ready-made strings). The only text that
reaches the script unquoted is `slurm.setup`, which is shell written by the site or user
on purpose, one validated line per item.
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path

from ftcore import contract, exits, layout, rendezvous, schema
from ftcore.errors import UserError
from ftcore.files import expand
from ftcore.schema import Job
from launcher import __version__, paths, slurm, stage

TEMPLATE = "sbatch.sh.j2"
_CONFIG_MARK = "@FT_CONFIG@"  # stands for "$FT_CONFIG" until the command is quoted
URI_PREFIXES = ("docker://", "docker-daemon://", "oras://", "library://", "shub://", "https://", "http://")


def q(value: object) -> str:
    quoted = shlex.quote(str(value))
    # `export X==` is valid bash but reads as a typo (shellcheck SC1097): quote a leading `=`.
    return f"'{quoted}'" if quoted.startswith("=") else quoted


def container_groups(job: Job, packages: tuple[str, ...] = contract.FT_PACKAGES) -> list[list[str]]:
    """`singularity exec --nv --bind ... IMAGE`, in readable groups; [] without a container.
    With mount_ft, ft's `packages` are bound read-only at the mount point, on PYTHONPATH."""
    if job.container.runtime == "none":
        return []
    groups = [[job.container.runtime, "exec", *(["--nv"] if job.container.nv else [])]]
    groups += [["--bind", bind] for bind in job.container.binds]
    if job.container.mount_ft:
        for package in packages:
            groups.append(["--bind", f"{paths.package_dir(package)}:{contract.MOUNT_POINT}/{package}:ro"])
        if "launcher" in packages:  # the launcher resolves factories: they travel beside it
            groups.append(["--bind", f"{paths.factories_dir()}:{contract.MOUNT_POINT}/factories:ro"])
        groups.append(["--env", f"PYTHONPATH={contract.MOUNT_POINT}"])
    return [*groups, [str(job.container.image)]]


def _python(job: Job) -> str:
    return job.container.python or ("python" if job.container.runtime != "none" else sys.executable)


def trainer_argv_groups(job: Job, config_path: Path) -> list[list[str]]:
    """The command each task runs, inside the container when there is one, in readable groups."""
    return [*container_groups(job), [_python(job), "-m", "trainer", "--config", str(config_path)]]


def srun_line(job: Job, ft_train_args: list[str]) -> str:
    """The one srun line a workshop's own batch script runs: `ft train` in the container,
    through ft's code bound into it, so the image needs no ft installed."""
    groups = [*container_groups(job, contract.FT_TRAIN_PACKAGES),
              [_python(job), "-m", "launcher", "train", *ft_train_args]]
    groups[0] = ["srun", *groups[0]]
    return " \\\n    ".join(shlex.join(g) for g in groups)


def trainer_argv(job: Job, config_path: Path) -> list[str]:
    return [word for group in trainer_argv_groups(job, config_path) for word in group]


def sbatch_options(job: Job, job_dir: Path, array_size: int = 0, dependency: str | None = None) -> list[str]:
    """The #SBATCH lines, derived from the job (nodes × devices is the single source)."""
    s, t = job.slurm, job.trainer
    log = job_dir / layout.LOGS / ("slurm-%A_%a.out" if array_size else "slurm-%j.out")
    options: list[tuple[str, object | None]] = [
        ("job-name", job.job_name),
        ("nodes", t.num_nodes),
        ("ntasks-per-node", t.devices),
    ]
    if t.accelerator == "gpu" and s.gpus_per_node_flag:
        options.append(("gpus-per-node", t.devices))
    optional = {
        "cpus-per-task": s.cpus_per_task,
        "mem": s.mem,
        "time": s.time,
        "partition": s.partition,
        "account": s.account,
        "qos": s.qos,
        "constraint": s.constraint,
    }
    options += [(name, value) for name, value in optional.items() if value is not None]
    options += [
        ("output", log),
        ("error", log),
        ("open-mode", "append"),  # a requeued job appends to the same log
        ("signal", f"B:USR1@{s.signal_seconds}"),
        ("requeue", None),
    ]
    if array_size:
        options.append(("array", f"0-{array_size - 1}"))
    if dependency:
        if not slurm.is_job_id(dependency):
            raise UserError(f"--after: {dependency!r} is not a SLURM job id")
        options.append(("dependency", f"afterok:{dependency}"))
    lines = [f"--{name}" if value is None else f"--{name}={q(value)}" for name, value in options]
    for name, value in s.extra.items():
        lines.append(f"--{name}" if value is None else f"--{name}={q(value)}")
    return lines


def render_sbatch(job: Job, job_dir: Path, template: str | None = None, array_size: int = 0,
                  dependency: str | None = None) -> str:
    """The sbatch script for `job` writing into `job_dir` (a sweep: `array_size` tasks, each
    in tasks/<i>/). Pure: reads only the template."""
    import jinja2  # only rendering needs it; `ft --help` does not

    check_folder(job_dir)
    template_path = expand(template or job.slurm.template or paths.templates_dir() / TEMPLATE)
    if not template_path.is_file():
        raise UserError(f"sbatch template {template_path} does not exist")
    env = _environment(str(template_path.parent))
    # Each task reads "$FT_CONFIG", set in the script: a sweep's array tasks each have their own.
    launch = " \\\n    ".join(shlex.join(g) for g in trainer_argv_groups(job, Path(_CONFIG_MARK)))
    launch = launch.replace(_CONFIG_MARK, '"$FT_CONFIG"')
    if array_size:
        run_dir_line = f'FT_RUN_DIR="$FT_JOB_DIR/{layout.TASKS}/$SLURM_ARRAY_TASK_ID"'
    else:
        run_dir_line = 'FT_RUN_DIR="$FT_JOB_DIR"'
    try:
        return env.get_template(template_path.name).render(
            version=__version__,
            factory=q(job.name),
            job_dir=q(job_dir),
            script_path=q(job_dir / layout.SCRIPT),
            config_name=layout.CONFIG,
            events_name=layout.EVENTS,
            sbatch_options=sbatch_options(job, job_dir, array_size, dependency),
            modules=[q(m) for m in job.slurm.modules],
            setup=list(job.slurm.setup),
            env=[(name, q(value)) for name, value in sorted(stage.environment(job).items())],
            srun_options="--kill-on-bad-exit=1 --label",
            run_dir_line=run_dir_line,
            launch=launch,
            requeue_code=exits.REQUEUE,
            port_base=rendezvous.PORT_BASE,
            port_span=rendezvous.PORT_SPAN,
            max_requeues=job.slurm.max_requeues,
        )
    except jinja2.TemplateError as err:
        raise UserError(f"sbatch template {template_path}: {err}") from None


def check_folder(job_dir: Path) -> None:
    """The job folder's path is written into the script (#SBATCH --output, FT_JOB_DIR): a
    newline there would start a new script line, whatever the quoting."""
    if schema.has_control(str(job_dir)):
        raise UserError(f"the job folder {str(job_dir)!r} has a newline or control character in its path",
                        hint=f"set {paths.HOME_ENV} to a folder whose path is plain text")


@functools.lru_cache(maxsize=8)
def _environment(folder: str):
    """One Jinja environment per template folder, so a template compiles once per process."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def preflight(job: Job, need_sbatch: bool) -> list[str]:
    """Problems that would make the job fail at once on the cluster, found on the login node."""
    import shutil

    problems = []
    c = job.container
    if c.runtime != "none" and c.image and not c.image.startswith(URI_PREFIXES):
        if not expand(c.image).is_file():
            problems.append(f"container.image {c.image} does not exist (give a .sif path or a docker:// URI)")
    for bind in c.binds:
        source = bind.split(":", 1)[0]
        if not expand(source).exists():
            problems.append(f"container.binds: bind source {source} does not exist")
    problems += job.missing_paths()
    if need_sbatch and shutil.which("sbatch") is None:
        problems.append("sbatch is not on PATH: run ft on a SLURM login node, or use --dry-run to "
                        "write and print the script, or --executor local to run here")
    return problems
