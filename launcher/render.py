"""Render a job into an sbatch script.

Every value is computed and shell-quoted here, in Python; the Jinja template only places
what it is given (StrictUndefined, loops over ready-made strings). The only text that
reaches the script unquoted is `slurm.setup`, which is shell written by the site or user
on purpose, one validated line per item.

A template may come from a factory or a site (`slurm.template`) and is rendered when a user
only inspects a recipe (`--dry-run`), so it is data: a sandboxed Jinja environment without
globals (no attribute of Python's internals, no call that changes anything), and the script
it makes holds no character that would hide text from the person reading it.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from pathlib import Path

from ftcore import contract, exits, layout, records, rendezvous, schema, shipped
from ftcore.errors import UserError
from ftcore.files import expand
from ftcore.schema import WRITTEN_PATHS, Job
from launcher import __version__, paths, scheduler, stage

TEMPLATE = "sbatch.sh.j2"
_CONFIG_MARK = "@FT_CONFIG@"  # stands for "$FT_CONFIG" until the command is quoted


def q(value: object) -> str:
    quoted = shlex.quote(str(value))
    # `export X==` is valid bash but reads as a typo (shellcheck SC1097): quote a leading `=`.
    return f"'{quoted}'" if quoted.startswith("=") else quoted


# Where Apptainer's default configuration binds host folders at the same path: $HOME,
# /tmp, /var/tmp, /proc, /sys, /dev (apptainer.conf "mount home/tmp/proc/sys/dev"). It
# binds the working directory too, but ft does not count on it: `sbatch job.sbatch` may be
# run again from anywhere.
SYSTEM_BINDS = ("/tmp", "/var/tmp", "/proc", "/sys", "/dev")


def default_binds(home: str | None = None) -> tuple[str, ...]:
    return (str(Path(home or Path.home())), *SYSTEM_BINDS)


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _same_place(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _split_bind(spec: str) -> tuple[str, str, str]:
    """`src[:dst[:opts]]` → absolute (src, dst, opts), as the runtime reads it."""
    parts = spec.split(":")
    src = os.path.abspath(os.path.expanduser(parts[0]))
    dst = os.path.normpath(parts[1]) if len(parts) > 1 and parts[1] else src
    return src, dst, parts[2] if len(parts) > 2 else "rw"


def needed_paths(job: Job, job_dir: Path) -> dict[str, tuple[str, bool]]:
    """Every host path the job reads or writes, by what names it: (absolute path, writes?).
    Which settings are paths is the schema's to say (Job.local_paths)."""
    needed = {"the job folder": (os.path.abspath(job_dir), True)}
    for key, value in job.local_paths.items():
        needed[key] = (os.path.abspath(os.path.expanduser(value)), key in WRITTEN_PATHS)
    if "HF_HUB_CACHE" in stage.environment(job):  # ft's shared hub cache (hub.cache_dir)
        needed["the hub cache"] = (str(stage.cache_dir(job)), True)
    return needed


def plan_binds(job: Job, job_dir: Path, packages: tuple[str, ...] = contract.FT_PACKAGES,
               home: str | None = None) -> tuple[list[str], list[str]]:
    """(the --bind specs, problems): ft's own code under container.mount_ft, one bind for each
    needed path that neither a default bind nor the user's binds show at the same path, then
    the user's binds. A user bind that shows a needed path somewhere else, or hides it, or
    makes a folder the job writes read-only, is a problem."""
    user = [_split_bind(spec) for spec in job.container.binds]
    binds, problems = [], []
    if job.container.mount_ft:
        # The trainer imports ftcore and nothing else of ft: those packages travel, and the
        # data files ft ships, so that `ft:NAME` resolves inside too (with the launcher, for
        # `ft train`, all its factories travel).
        for package in packages:
            binds.append(f"{paths.package_dir(package)}:{contract.MOUNT_POINT}/{package}:ro")
        if "launcher" in packages:
            binds.append(f"{paths.factories_dir()}:{contract.MOUNT_POINT}/factories:ro")
        else:
            binds.append(f"{shipped.data_dir()}:{contract.DATA_MOUNT}:ro")
        for spec, (src, dst, _) in zip(job.container.binds, user):
            if _covers(dst, contract.MOUNT_POINT) or _covers(contract.MOUNT_POINT, dst):
                problems.append(f"container.binds entry {spec} mounts over {contract.MOUNT_POINT}, where "
                                "container.mount_ft puts ft's trainer: choose another destination")
    defaults = default_binds(home)
    placed: list[str] = []
    for key, (path, writes) in needed_paths(job, job_dir).items():
        covered = any(_covers(default, path) for default in defaults)
        for spec, (src, dst, opts) in zip(job.container.binds, user):
            if _covers(dst, path):
                shown = os.path.join(src, os.path.relpath(path, dst)) if path != dst else src
                if not _same_place(shown, path):
                    problems.append(f"container.binds entry {spec} shows {shown} at {path}, but {key} "
                                    f"{path} must be the same inside the container: bind it as "
                                    f"{src if _same_place(src, dst) else dst}:{dst} or drop the entry")
                elif writes and opts == "ro":
                    problems.append(f"container.binds entry {spec} is read-only, but the job writes into "
                                    f"{key} {path}: drop `:ro`")
                covered = True
            elif _covers(path, dst) and not _same_place(src, dst):
                problems.append(f"container.binds entry {spec} hides part of {key} {path} under {src}: "
                                "choose a destination outside it")
        if not covered and not any(_covers(outer, path) for outer in placed):
            placed = [p for p in placed if not _covers(path, p)] + [path]
    writes_into = {path for path, writes in needed_paths(job, job_dir).values() if writes}
    for path in placed:
        rw = path in writes_into or any(_covers(path, w) for w in writes_into)
        binds.append(path if rw else f"{path}:{path}:ro")
    return binds + list(job.container.binds), problems


def container_groups(job: Job, packages: tuple[str, ...] = contract.FT_PACKAGES,
                     job_dir: Path | None = None) -> list[list[str]]:
    """`singularity exec --nv --bind ... IMAGE`, in readable groups; [] without a container.
    The binds are plan_binds' (ft's `packages` read-only at the mount point, on PYTHONPATH,
    and every path the job needs); the image is the one to run (a URI's cached SIF)."""
    if job.container.runtime == "none":
        return []
    from launcher import image

    groups = [[job.container.runtime, "exec", *(["--nv"] if job.container.nv else [])]]
    binds, _ = plan_binds(job, job_dir or paths.jobs_root(), packages)
    groups += [["--bind", bind] for bind in binds]
    if job.container.mount_ft:
        groups.append(["--env", f"PYTHONPATH={contract.MOUNT_POINT}"])
    return [*groups, [image.image_to_run(job.container)]]


def _python(job: Job) -> str:
    return job.container.python or ("python" if job.container.runtime != "none" else sys.executable)


def trainer_argv_groups(job: Job, config_path: Path, job_dir: Path | None = None) -> list[list[str]]:
    """The command each task runs, inside the container when there is one, in readable groups."""
    return [*container_groups(job, job_dir=job_dir or config_path.parent),
            [_python(job), "-m", "trainer", "--config", str(config_path)]]


def srun_line(job: Job, ft_train_args: list[str]) -> str:
    """The one srun line a workshop's own batch script runs: `ft train` in the container,
    through ft's code bound into it, so the image needs no ft installed. `ft train` makes
    its job folders under $FT_HOME/jobs: that folder is bound."""
    groups = [*container_groups(job, contract.FT_TRAIN_PACKAGES, paths.jobs_root()),
              [_python(job), "-m", "launcher", "train"]]
    groups[0] = ["srun", *groups[0]]
    words = " ".join(shlex.join(g) for g in groups[-1:]) + "".join(f" {expandable(a)}" for a in ft_train_args)
    return " \\\n    ".join([*(shlex.join(g) for g in groups[:-1]), words])


_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")


def expandable(word: str) -> str:
    """`word` quoted for the shell, its `$NAME`/`${NAME}` left for the batch script to expand
    (`model.path="$MODEL_DIR"`), everything else literal (`$(...)` and backquotes too)."""
    parts, last = [], 0
    for match in _VARIABLE.finditer(word):
        if match.start() > last:
            parts.append(shlex.quote(word[last:match.start()]))
        parts.append(f'"{match.group(0)}"')
        last = match.end()
    if last < len(word) or not parts:
        parts.append(shlex.quote(word[last:]))
    return "".join(parts)


def trainer_argv(job: Job, config_path: Path, job_dir: Path | None = None) -> list[str]:
    return [word for group in trainer_argv_groups(job, config_path, job_dir) for word in group]


def plan_default_time() -> str:
    """slurm.time `auto` that no submission settled (`ft submit` sets it from the plan)."""
    from launcher.plan import DEFAULT_TIME

    return DEFAULT_TIME


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
        options.append(("gpus-per-node", f"{t.gpu_type}:{t.devices}" if t.gpu_type else t.devices))
    optional = {
        "cpus-per-task": s.cpus_per_task,
        "mem": s.mem,
        "time": s.time if s.time != "auto" else plan_default_time(),
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
        if not scheduler.is_job_id(dependency):
            raise UserError(f"--after: {dependency!r} is not a SLURM job id")
        options.append(("dependency", f"afterok:{dependency}"))
    lines = [f"--{name}" if value is None else f"--{name}={q(value)}" for name, value in options]
    for name, value in s.extra.items():
        lines.append(f"--{name}" if value is None else f"--{name}={q(value)}")
    return lines


def render_sbatch(job: Job, job_dir: Path, template: str | None = None, array_size: int = 0,
                  dependency: str | None = None, kill_wait_s: int | None = None) -> str:
    """The sbatch script for `job` writing into `job_dir` (a sweep: `array_size` tasks, each
    in tasks/<i>/). `kill_wait_s`: the cluster's KillWait, exported for the trainer when known.
    Pure: reads only the template."""
    import jinja2  # only rendering needs it; `ft --help` does not

    check_folder(job_dir)
    template_path = expand(template or job.slurm.template or paths.templates_dir() / TEMPLATE)
    if not template_path.is_file():
        raise UserError(f"sbatch template {template_path} does not exist")
    env = _environment(str(template_path.parent))
    # Each task reads "$FT_CONFIG", set in the script: a sweep's array tasks each have their own.
    launch = " \\\n    ".join(shlex.join(g) for g in trainer_argv_groups(job, Path(_CONFIG_MARK), job_dir))
    launch = launch.replace(_CONFIG_MARK, '"$FT_CONFIG"')
    if array_size:
        run_dir_line = f'FT_RUN_DIR="$FT_JOB_DIR/{layout.TASKS}/$SLURM_ARRAY_TASK_ID"'
    else:
        run_dir_line = 'FT_RUN_DIR="$FT_JOB_DIR"'
    try:
        script = env.get_template(template_path.name).render(
            version=q(__version__),
            factory=q(job.name),
            job_dir=q(job_dir),
            script_path=q(job_dir / layout.SCRIPT),
            config_name=q(layout.CONFIG),
            events_name=q(layout.EVENTS),
            event=records.event_shell(),
            sbatch_options=sbatch_options(job, job_dir, array_size, dependency),
            modules=[q(m) for m in job.slurm.modules],
            setup=list(job.slurm.setup),
            env=[(name, q(value)) for name, value in sorted(stage.environment(job).items())]
            + ([(exits.KILL_WAIT_VAR, q(kill_wait_s))] if kill_wait_s is not None else []),
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
    except Exception as err:  # the sandbox's own limits (a huge range), or a template's 1/0
        raise UserError(f"sbatch template {template_path}: {type(err).__name__}: {err}") from None
    hidden = _HIDDEN.search(script)
    if hidden:
        line = script.count("\n", 0, hidden.start()) + 1
        raise UserError(f"sbatch template {template_path}: line {line} of the script it makes holds the invisible "
                        f"character U+{ord(hidden.group()):04X}, which would hide text from anyone reading it",
                        hint="remove it from the template (or from the setting that put it there)")
    return script


def check_folder(job_dir: Path) -> None:
    """The job folder's path is written into the script (#SBATCH --output, FT_JOB_DIR): a
    newline there would start a new script line, whatever the quoting."""
    if schema.has_control(str(job_dir)):
        raise UserError(f"the job folder {str(job_dir)!r} has a newline or control character in its path",
                        hint=f"set {paths.HOME_ENV} to a folder whose path is plain text")


# Control characters other than tab and newline, C1 controls, zero-width and bidirectional
# marks: a terminal or an editor shows the script without what they hide or reorder.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


@functools.lru_cache(maxsize=8)
def _environment(folder: str):
    """One sandboxed Jinja environment per template folder, so a template compiles once per process."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.clear()  # range, lipsum, cycler, joiner, namespace, dict: a template places values, no more
    return env


def path_problems(job: Job, job_dir: Path) -> list[str]:
    """Host paths the job needs that are not here: a warning under --dry-run (a laptop has
    no cluster paths), a refusal at submit."""
    from launcher import image

    problems = []
    c = job.container
    if c.runtime != "none" and c.image and not image.is_uri(c.image):
        if not expand(c.image).exists():
            problems.append(f"container.image {c.image} does not exist (give a .sif path or a docker:// URI)")
    for bind in c.binds:
        source = bind.split(":", 1)[0]
        if not expand(source).exists():
            problems.append(f"container.binds: bind source {source} does not exist")
    return problems + job.missing_paths()


def data_problems(job: Job) -> list[str]:
    """A local data file whose first records do not fit data.format (read here, in a moment,
    rather than on the cluster after the model loaded), naming the format that fits."""
    from ftcore import formats, shipped

    problems = []
    named = [(key, source.path) for key, sources in (("path", job.data.sources), ("val_path", job.data.val_sources))
             for source in sources]
    for key, spec in named:
        try:
            local = Path(shipped.expand(spec)).expanduser() if spec else None
        except UserError as err:
            problems += err.problems
            continue
        if local is not None and local.is_file():
            if formats.holds_nothing(local):
                problems.append(f"data.{key}: {local} holds no records"
                                + ("; leave data.val_path unset to hold out data.val_fraction of the training data"
                                   if key == "val_path" else ""))
                continue
            mismatch = formats.mismatch(local, job.data.format)
            if mismatch:
                problems.append(f"data.{key}: {mismatch}")
    return problems


def preflight(job: Job, job_dir: Path | None = None, dry_run: bool = False,
              paths_here: bool = True) -> tuple[list[str], list[str]]:
    """(problems, warnings): what would make the job fail at once on the cluster, found on the
    login node. Under --dry-run a missing path is only a warning; with `paths_here` False (a
    job for another machine, `--cluster`) paths are that machine's to check. What the
    scheduler itself needs (sbatch on PATH) is its own `Scheduler.preflight`."""
    job_dir = job_dir or paths.jobs_root() / "NEW"
    problems = plan_binds(job, job_dir)[1] if job.container.runtime != "none" else []
    missing = path_problems(job, job_dir) if paths_here else []
    warnings = missing if dry_run else []
    problems += [] if dry_run else missing
    problems += data_problems(job)
    return problems, warnings
