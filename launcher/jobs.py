"""What ft knows of the jobs it launched: the job folders, the scheduler, and the two together.

A job folder outlives the scheduler's memory of the job (no accounting needed): the script
records each start, signal, requeue and exit in `events.jsonl`, the trainer writes
`metrics.jsonl` and `checkpoints/latest`. The scheduler, while it still knows the job,
has the last word on its state.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from ftcore import exits, layout
from ftcore.errors import UserError
from launcher import jobdir, paths, slurm


# Executors whose jobs SLURM knows by id (`ft submit`'s script, or a workshop's script running
# `ft train` under srun), and those whose script ft did not write (`ft train`, however started).
SCHEDULED_EXECUTORS = ("slurm", "srun")
OWN_SCRIPT_EXECUTORS = ("srun", "torchrun")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return records


def _last_line_record(path: Path) -> dict[str, Any]:
    """The last complete JSON line of a file that may be large and growing."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


@dataclass
class JobView:
    folder: Path
    record: dict[str, Any]
    config: dict[str, Any] = field(repr=False)

    @property
    def job_id(self) -> str | None:
        return self.record.get("job_id")

    @property
    def earlier_ids(self) -> list[str]:
        """Ids of earlier submissions of this folder (`ft resubmit`)."""
        return [str(h.get("job_id")) for h in self.record.get("history", []) if h.get("job_id")]

    @property
    def executor(self) -> str:
        return self.record.get("executor", "dry-run")

    @property
    def factory(self) -> str:
        return str(self.config.get("name") or self.record.get("factory") or "?")

    @property
    def run_dirs(self) -> list[Path]:
        """The folders runs write into: the job folder, or one per sweep task."""
        tasks = sorted((self.folder / layout.TASKS).glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 0)
        return tasks or [self.folder]

    @property
    def events(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.run_dirs[0] / layout.EVENTS)

    @property
    def created(self) -> float:
        return (self.folder / jobdir.CONFIG).stat().st_mtime if (self.folder / jobdir.CONFIG).exists() else 0

    def progress(self) -> str:
        steps = []
        for run in self.run_dirs:
            last = _last_line_record(run / layout.METRICS)
            steps.append(last.get("step"))
        total = (self.config.get("trainer") or {}).get("max_steps")
        done = [s for s in steps if isinstance(s, int)]
        if not done:
            return "-"
        shown = min(done)
        return f"{shown}/{total}" if total else str(shown)

    def latest_checkpoint(self) -> str | None:
        newest = layout.newest_complete(self.run_dirs[0])
        return newest.name if newest else None


def load(folder: Path) -> JobView:
    try:
        config = yaml.safe_load((folder / jobdir.CONFIG).read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    return JobView(folder, jobdir.read_record(folder), config)


def all_jobs(root: Path | None = None) -> list[JobView]:
    """Every job folder, newest first (temporary folders being written are skipped)."""
    root = root or paths.jobs_root()
    if not root.is_dir():
        return []
    views = [load(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(views, key=lambda v: (v.created, v.folder.name), reverse=True)


def find(spec: str, root: Path | None = None) -> JobView:
    """A job by id, folder path, or unique prefix of its id or folder name."""
    candidate = Path(spec).expanduser()
    if candidate.is_dir() and (candidate / jobdir.CONFIG).exists():
        return load(candidate.resolve())
    views = all_jobs(root)
    exact = [v for v in views if v.job_id == spec or v.folder.name == spec or spec in v.earlier_ids]
    if len(exact) == 1:
        return exact[0]
    matches = exact or [v for v in views if (v.job_id or "").startswith(spec) or v.folder.name.startswith(spec)]
    if not matches:
        raise UserError(f"no job {spec!r} among the {len(views)} job(s) under {root or paths.jobs_root()}",
                        hint="`ft jobs` lists them; give a job id, a folder or a unique prefix")
    if len(matches) > 1:
        names = ", ".join(f"{v.job_id or '-'} ({v.folder.name})" for v in matches[:6])
        raise UserError(f"{spec!r} matches {len(matches)} jobs: {names}", hint="give more of the id or folder name")
    return matches[0]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _folder_state(view: JobView) -> str:
    """The state the folder's own records give."""
    events = view.events
    if view.executor == "dry-run":
        return "DRY-RUN"
    if not events:
        return "PENDING" if view.executor in SCHEDULED_EXECUTORS else "STARTING"
    last = events[-1]
    if last["event"] == "exit":
        code = last.get("code")
        if code == exits.REQUEUE and view.executor != "slurm":  # ft's own script requeues, or says why not
            return "PREEMPTED (checkpointed: requeue or run again to resume)"
        return "COMPLETED" if code == 0 else f"FAILED (exit {code})"
    if last["event"] == "requeue":
        return "REQUEUED"
    if view.executor == "local":
        pids = view.record.get("pids") or []
        if pids and not any(_pid_alive(int(p)) for p in pids):
            return "FAILED (processes gone)"
    return "RUNNING"


def state(view: JobView, ask_scheduler: bool = True) -> str:
    """The scheduler's word while it knows the job, the folder's after."""
    if ask_scheduler and view.executor in SCHEDULED_EXECUTORS and view.job_id:
        try:
            info = slurm.job_info(view.job_id)
        except UserError:
            info = None  # no scheduler reachable here: the folder still knows
        if info:
            scheduler_state = info.get("JobState", "UNKNOWN")
            if scheduler_state in ("COMPLETED", "FAILED") and _folder_state(view).startswith("REQUEUED"):
                return "REQUEUED"
            return scheduler_state
    return _folder_state(view)


def is_finished(state_text: str) -> bool:
    word = state_text.split()[0]
    return word in slurm.TERMINAL_STATES or word == "DRY-RUN"


def age(view: JobView) -> str:
    seconds = max(0, time.time() - view.created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def summary_rows(views: list[JobView], ask_scheduler: bool = True) -> list[dict[str, Any]]:
    states: dict[str, str] = {}
    if ask_scheduler and any(v.executor in SCHEDULED_EXECUTORS for v in views):
        try:
            states = slurm.queue_states()
        except UserError:
            states = {}
    rows = []
    for view in views:
        known = states.get(view.job_id or "")
        rows.append({
            "id": view.job_id,
            "factory": view.factory,
            "executor": view.executor,
            "state": known or state(view, ask_scheduler=False),
            "progress": view.progress(),
            "age": age(view),
            "folder": str(view.folder),
        })
    return rows


def log_files(view: JobView) -> list[Path]:
    logs = view.folder / "logs"
    if view.executor != "slurm":  # one file per process; `ft submit`'s script writes SLURM's own
        return sorted(logs.glob("rank-*.out"))
    return sorted(logs.glob("slurm-*.out"), key=lambda p: p.stat().st_mtime)


def select_rank(lines: list[str], rank: int | None) -> list[str]:
    """srun --label prefixes each task's line with `N: ` (space-padded); keep one task's lines."""
    if rank is None:
        return lines
    prefix = f"{rank}: "
    return [line.lstrip()[len(prefix):] for line in lines if line.lstrip().startswith(prefix)]


def log_lines(view: JobView, rank: int | None = None, follow: bool = False, poll: float = 1.0) -> Iterator[str]:
    """The job's output lines (one task's with `rank`); with `follow`, until the job has ended."""
    if view.executor == "dry-run":
        raise UserError(f"{view.folder.name} is a dry run: it has no logs (submit it with `ft resubmit {view.folder}`)")
    offsets: dict[Path, int] = {}

    def drain() -> Iterator[str]:
        files = log_files(view)
        if view.executor != "slurm" and rank is not None:
            files = [f for f in files if f.name == f"rank-{rank}.out"]
        for path in files:
            with open(path, "rb") as handle:
                handle.seek(offsets.get(path, 0))
                data = handle.read()
            # Following: keep a partial last line for the next round.
            cut = data.rfind(b"\n") + 1 if follow else len(data)
            offsets[path] = offsets.get(path, 0) + cut
            lines = data[:cut].decode(errors="replace").splitlines()
            yield from select_rank(lines, rank) if view.executor == "slurm" else lines

    yield from drain()
    while follow:
        finished = is_finished(state(view))
        yield from drain()
        if finished:
            return
        time.sleep(poll)


def cancel(view: JobView) -> JobView:
    """Cancel a pending or running job: scancel, or SIGTERM to a local job's task groups."""
    current = state(view)
    if is_finished(current):
        raise UserError(f"job {view.job_id or view.folder.name} already ended ({current}): nothing to cancel")
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
    return view
