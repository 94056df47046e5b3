"""Render a job into an sbatch script.

Every value is computed and shell-quoted here, in Python; the Jinja template only places
what it is given (StrictUndefined, loops over ready-made strings). The only text that
reaches the script unquoted is `slurm.setup`, which is shell written by the site or user
on purpose, one validated line per item.

A template may come from a factory or a site (`slurm.template`) and is rendered when a user
only inspects a recipe (`--dry-run`), so it is data: a sandboxed Jinja environment without
globals (no attribute of Python's internals, no call that changes anything), rendered in a
forked child bounded in time, memory and output (a loop can still be long, or a string
doubled), and the script it makes holds no character that would hide text from the person
reading it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

from ftcore import contract, exits, layout, records, rendezvous, schema, shipped
from ftcore.errors import UserError
from ftcore.files import expand
from ftcore.schema import WRITTEN_PATHS, Job
from launcher import __version__, paths, runtime, scheduler, stage

TEMPLATE = "sbatch.sh.j2"
# A script is a few KiB; a template (or one that makes a script) past these is not one.
TEMPLATE_LIMIT_BYTES = 1 * 2**20
SCRIPT_LIMIT_BYTES = 1 * 2**20
RENDER_TIMEOUT_S = 10
RENDER_MEMORY_BYTES = 512 * 2**20  # address space the rendering child may add to what ft holds
_CONFIG_MARK = "@FT_CONFIG@"  # stands for "$FT_CONFIG" until the command is quoted
# Words that stand for the script's variables until the command is quoted.
_MARKS = {_CONFIG_MARK: '"$FT_CONFIG"', runtime.JOB_ID: '"${SLURM_JOB_ID:?}"'}  # no job, no line


def q(value: object) -> str:
    quoted = shlex.quote(str(value))
    # `export X==` is valid bash but reads as a typo (shellcheck SC1097): quote a leading `=`.
    return f"'{quoted}'" if quoted.startswith("=") else quoted


def default_binds(job: Job, home: str | None = None) -> tuple[str, ...]:
    """What the job's runtime shows at the same path without being asked."""
    return runtime.of(job.container).default_binds(str(Path(home or Path.home())))


def _unmark(text: str) -> str:
    for mark, variable in _MARKS.items():
        text = text.replace(mark, variable)
    return text


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
    defaults = default_binds(job, home)
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
                     job_dir: Path | None = None, env_names: tuple[str, ...] = ()) -> list[list[str]]:
    """What the job's runtime puts before the trainer's command, in readable groups
    (`apptainer exec --nv --bind ... IMAGE`, or Pyxis's srun options); [] without a container.
    The binds are plan_binds' (ft's `packages` read-only at the mount point, on PYTHONPATH,
    and every path the job needs); the image is the one to run (a URI's cached file)."""
    rt = runtime.of(job.container)
    if not rt.contained:
        return rt.launch(job, [], "")
    folder = job_dir or paths.jobs_root()
    binds, _ = plan_binds(job, folder, packages)
    return rt.launch(job, binds, rt.image_to_run(job.container), env_names, str(folder))


def _python(job: Job) -> str:
    return job.container.python or ("python" if runtime.of(job.container).contained else sys.executable)


def trainer_argv_groups(job: Job, config_path: Path, job_dir: Path | None = None) -> list[list[str]]:
    """The command each task runs, inside the container when there is one, in readable groups."""
    env_names = tuple(sorted(stage.environment(job)))
    return [*container_groups(job, job_dir=job_dir or config_path.parent, env_names=env_names),
            [_python(job), "-m", "trainer", "--config", str(config_path)]]


def srun_line(job: Job, ft_train_args: list[str]) -> str:
    """The one srun line a workshop's own batch script runs: `ft train` in the container,
    through ft's code bound into it, so the image needs no ft installed. `ft train` makes
    its job folders under $FT_HOME/jobs: that folder is bound."""
    groups = [*container_groups(job, contract.FT_TRAIN_PACKAGES, paths.jobs_root()),
              [_python(job), "-m", "launcher", "train"]]
    groups[0] = ["srun", *groups[0]]
    words = " ".join(shlex.join(g) for g in groups[-1:]) + "".join(f" {expandable(a)}" for a in ft_train_args)
    return _unmark(" \\\n    ".join([*(shlex.join(g) for g in groups[:-1]), words]))


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
                  dependency: str | None = None, kill_wait_s: int | None = None,
                  command: list[str] | None = None) -> str:
    """The sbatch script for `job` writing into `job_dir` (a sweep: `array_size` tasks, each
    in tasks/<i>/). `kill_wait_s`: the cluster's KillWait, exported for the trainer when known.
    `command`: what each task runs instead of the trainer (`python -m fttools.lmeval ...`, a
    short job after training), in the same container with ft's model tools bound in.
    Pure: reads only the template."""
    import jinja2  # only rendering needs it; `ft --help` does not

    check_folder(job_dir)
    template_path = expand(template or job.slurm.template or paths.templates_dir() / TEMPLATE)
    if not template_path.is_file():
        raise UserError(f"sbatch template {template_path} does not exist")
    if template_path.stat().st_size > TEMPLATE_LIMIT_BYTES:
        raise UserError(f"sbatch template {template_path} is larger than {TEMPLATE_LIMIT_BYTES // 2**20} MiB: "
                        "not a script template")
    env = _environment(str(template_path.parent))
    # Each task reads "$FT_CONFIG", set in the script: a sweep's array tasks each have their own.
    groups = (trainer_argv_groups(job, Path(_CONFIG_MARK), job_dir) if command is None else
              [*container_groups(job, contract.FT_TOOL_PACKAGES, job_dir), [_python(job), *command]])
    launch = _unmark(" \\\n    ".join(shlex.join(g) for g in groups))
    if array_size:
        run_dir_line = f'FT_RUN_DIR="$FT_JOB_DIR/{layout.TASKS}/$SLURM_ARRAY_TASK_ID"'
    else:
        run_dir_line = 'FT_RUN_DIR="$FT_JOB_DIR"'
    values = dict(
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
    try:
        template_object = env.get_template(template_path.name)
    except jinja2.TemplateError as err:
        raise UserError(f"sbatch template {template_path}: {str(err)[:500]}") from None
    if template_path == paths.templates_dir() / TEMPLATE:
        script = template_object.render(**values)  # ft's own: no fork for it (a sweep renders each task)
    else:
        script = _render_bounded(template_object, values, template_path)
    hidden = _HIDDEN.search(script)
    if hidden:
        line = script.count("\n", 0, hidden.start()) + 1
        raise UserError(f"sbatch template {template_path}: line {line} of the script it makes holds the invisible "
                        f"character U+{ord(hidden.group()):04X}, which would hide text from anyone reading it",
                        hint="remove it from the template (or from the setting that put it there)")
    return script


def _render_bounded(template, values: dict, template_path: Path) -> str:
    """`template` rendered in a forked child: at most RENDER_TIMEOUT_S seconds, RENDER_MEMORY_BYTES
    more memory and SCRIPT_LIMIT_BYTES of script, else one UserError (the child is killed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, send back "ok:" + script or "no:" + why, and leave at once
        os.close(read_end)
        try:
            _limit_memory(RENDER_MEMORY_BYTES)
            answer = b"ok:" + template.render(**values).encode()
        except BaseException as err:  # noqa: BLE001 - every failure becomes the parent's message
            answer = b"no:" + _render_failure(err).encode(errors="replace")
        with contextlib.suppress(OSError):
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(answer[:SCRIPT_LIMIT_BYTES + 3 + 1])
        os._exit(0)
    os.close(write_end)
    try:
        answer, late = _read_bounded(read_end, SCRIPT_LIMIT_BYTES + 3, RENDER_TIMEOUT_S)
    finally:
        os.close(read_end)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    where = f"sbatch template {template_path}"
    if late:
        raise UserError(f"{where}: rendering did not finish within {RENDER_TIMEOUT_S} s (a loop without end?)",
                        hint="nothing was written or submitted")
    if len(answer) > SCRIPT_LIMIT_BYTES + 3:
        raise UserError(f"{where}: the script it makes is larger than {SCRIPT_LIMIT_BYTES // 2**20} MiB",
                        hint="nothing was written or submitted")
    if answer.startswith(b"ok:"):
        return answer[3:].decode()
    why = answer[3:].decode(errors="replace") or "rendering failed (the renderer ended without an answer)"
    raise UserError(f"{where}: {why}")


def _render_failure(err: BaseException) -> str:
    import jinja2

    if isinstance(err, MemoryError):
        return f"rendering needs more than {RENDER_MEMORY_BYTES // 2**20} MiB (a string or list multiplied?)"
    if isinstance(err, jinja2.TemplateError):
        return str(err)[:500]
    return f"{type(err).__name__}: {str(err)[:500]}"  # the sandbox's own limits (a huge range), a 1/0


def _limit_memory(extra: int) -> None:
    """Cap this process's address space at what it holds now plus `extra` (Linux: /proc)."""
    try:
        import resource

        held = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (held + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (OSError, ValueError, ImportError):
        pass  # no /proc (macOS): the time and size bounds still hold


def _read_bounded(fd: int, limit: int, timeout: float) -> tuple[bytes, bool]:
    """(up to limit + 1 bytes read from `fd` until its end, whether the time ran out first)."""
    import select

    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) <= limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return bytes(data), True
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data), False


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
    problems = []
    c = job.container
    rt = runtime.of(c)
    problem = rt.image_problem(c) if rt.contained and c.image else None
    if problem:
        problems.append(problem)
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
    rt = runtime.of(job.container)
    problems = []
    if rt.contained:
        binds, problems = plan_binds(job, job_dir)
        problems += rt.mount_problems(binds)
    missing = path_problems(job, job_dir) if paths_here else []
    warnings = missing if dry_run else []
    problems += [] if dry_run else missing
    problems += data_problems(job)
    return problems, warnings
