"""What ft knows of the jobs it launched: the job folders, the scheduler, and the two together.

A job folder outlives the scheduler's memory of the job (no accounting needed): the script
records each start, signal, requeue and exit in `events.jsonl`, the trainer writes
`metrics.jsonl` and `checkpoints/latest`. The scheduler, while it still knows the job,
has the last word on its state.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from ftcore import exits, layout, progress, records
from ftcore.files import expand, read_plain
from ftcore.errors import UserError
from launcher import jobdir, jobindex, paths, scheduler
from launcher.config import load_yaml
from launcher.scheduler import Scheduler, TERMINAL_STATES

# A job's resolved config is a few KiB; past this it is not one ft wrote.
CONFIG_LIMIT_BYTES = 16 * 2**20
# States in which a job cannot be running, besides the scheduler's terminal ones.
UNKNOWN = "UNKNOWN"
UNREADABLE = "UNREADABLE"
_LIVE_FOLDER_STATES = ("PENDING", "RUNNING", "REQUEUED", "STARTING")
# `ft status 15_1`: task 1 of the sweep (SLURM job array) 15.
_ARRAY_TASK = re.compile(r"^(\d+)_(\d+)$")


@dataclass
class JobView:
    folder: Path
    record: dict[str, Any]
    config: dict[str, Any] = field(repr=False)
    problem: str | None = None  # why the folder cannot be read (then `ft jobs` says UNREADABLE)
    task: int | None = None  # one task of a sweep (`15_1`), or the whole job
    earlier: str | None = None  # asked for by the id of an earlier submission (`ft resubmit`)

    @property
    def job_id(self) -> str | None:
        """The scheduler's id: from the record, else from the job's own start event (when the
        scheduler's answer to the submission was lost, ft's script still wrote the job's id)."""
        recorded = self.record.get("job_id")
        if scheduler.is_job_id(recorded):
            return recorded
        ran = self.scheduler
        if ran and ran.by_id and ran.ft_script:
            for event in self.events:
                if ran.is_job_id(event.get("job_id")):
                    return event["job_id"]
        return None

    @property
    def label(self) -> str:
        """How a person names it: `15`, `15_1`, or the folder's name before it was submitted."""
        name = self.job_id or self.folder.name
        return name if self.task is None else f"{name}_{self.task}"

    @property
    def is_sweep(self) -> bool:
        return (self.folder / layout.TASKS).is_dir()

    @property
    def earlier_ids(self) -> list[str]:
        """Ids of earlier submissions of this folder (`ft resubmit`)."""
        history = self.record.get("history")
        entries = history if isinstance(history, list) else []
        return [h["job_id"] for h in entries if isinstance(h, dict) and scheduler.is_job_id(h.get("job_id"))]

    @property
    def executor(self) -> str:
        """What ran the job, as its record names it; anything unknown reads as a dry run."""
        return self.scheduler.name if self.scheduler else "dry-run"

    @property
    def scheduler(self) -> Scheduler | None:
        """What ran the job (None: a dry run, never submitted)."""
        return scheduler.for_record(self.record.get("executor", "dry-run"))

    @property
    def factory(self) -> str:
        return str(self.config.get("name") or self.record.get("factory") or "?")

    @property
    def run_dirs(self) -> list[Path]:
        """The folders runs write into: the job folder, or one per sweep task (this task's only)."""
        if self.task is not None:
            return [self.folder / layout.TASKS / str(self.task)]
        try:
            tasks = [p for p in (self.folder / layout.TASKS).iterdir() if p.is_dir() and p.name.isdigit()]
        except OSError:
            tasks = []
        return sorted(tasks, key=lambda p: int(p.name)) or [self.folder]

    def with_task(self, task: int) -> "JobView":
        if not (self.folder / layout.TASKS / str(task) / layout.CONFIG).is_file():
            count = len(list((self.folder / layout.TASKS).glob("*/" + layout.CONFIG)))
            what = f"has tasks 0-{count - 1}" if count else "is not a sweep"
            raise UserError(f"job {self.job_id or self.folder.name} {what}: there is no task {task}")
        return dataclasses.replace(self, task=task)

    @property
    def events(self) -> list[dict[str, Any]]:
        return records.events(self.run_dirs[0])

    @property
    def created(self) -> float:
        for name in (jobdir.CONFIG, ""):
            try:
                return (self.folder / name).stat().st_mtime
            except OSError:
                continue
        return 0

    def progress(self) -> str:
        """Steps done of total, as short as a table column wants (the slowest task of a sweep)."""
        steps = []
        for run in self.run_dirs:
            last = records.last_jsonl(run / layout.METRICS)
            steps.append((last.get(records.STEP), last.get(records.TOTAL_STEPS)))
        done = [(s, t) for s, t in steps if isinstance(s, int) and not isinstance(s, bool)]
        if not done:
            return "-"
        shown, total = min(done, key=lambda pair: pair[0])
        trainer = self.config.get("trainer")
        total = total if isinstance(total, int) else trainer.get("max_steps") if isinstance(trainer, dict) else None
        return f"{shown}/{total}" if isinstance(total, int) else str(shown)

    def progress_detail(self, run: Path | None = None, running: bool = True) -> str:
        """`120/250 (48%), 0:30 elapsed, 0:32 left`, as the trainer's log line says it (no time
        left once the run is not `running`: it stopped before its end); at the end, the
        trainer's summary."""
        last = records.last_jsonl((run or self.run_dirs[0]) / layout.METRICS, records.TOTAL_STEPS)
        try:
            if last.get(records.END):
                text = f"{last['step']} steps done in {progress.clock(last.get('elapsed_s', 0))}"
                if "final_val_loss" in last:
                    text += (f"; val_loss final {last['final_val_loss']:.4f}, best {last['best_val_loss']:.4f}"
                             f" (step {last['best_step']})")
                return text
            return progress.of_record(last, running) if last else self.progress()
        except (KeyError, TypeError, ValueError):  # a record written by something else
            return self.progress()

    def latest_checkpoint(self, run: Path | None = None) -> str | None:
        newest = layout.newest_complete(run or self.run_dirs[0])
        return newest.name if newest else None


def load(folder: Path) -> JobView:
    """A job folder as ft sees it; what cannot be read is named in `problem`, never raised."""
    problems = []
    try:
        config = load_yaml(read_plain(folder / jobdir.CONFIG, limit=CONFIG_LIMIT_BYTES).decode(), jobdir.CONFIG)
    except FileNotFoundError:
        config, problems = {}, [f"no {jobdir.CONFIG}"]
    except UserError as err:
        config = {}
        problems.append(err.problems[0])
    except (OSError, ValueError, yaml.YAMLError) as err:
        config = {}
        problems.append(f"{jobdir.CONFIG} cannot be read ({type(err).__name__})")
    if config is not None and not isinstance(config, dict):
        problems.append(f"{jobdir.CONFIG} does not hold a job")
    try:
        record = jobdir.read_record(folder)
    except ValueError as err:
        record = {}
        problems.append(str(err))
    if "job_id" in record and record["job_id"] is not None and not scheduler.is_job_id(record["job_id"]):
        problems.append(f"{jobdir.RECORD}: job_id {str(record['job_id'])[:40]!r} is not a scheduler's job id")
        record = {k: v for k, v in record.items() if k != "job_id"}
    return JobView(folder, record, config if isinstance(config, dict) else {}, "; ".join(problems) or None)


def _folders(root: Path) -> list[os.DirEntry]:
    """The job folders under `root` (temporary folders being written, and the index, skipped)."""
    try:
        with os.scandir(root) as entries:
            return [e for e in entries if not e.name.startswith(".") and _is_dir(e)]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UserError(f"cannot read the job folders in {root}: {err.strerror}") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop, a vanished entry: not a job folder
        return False


def _created(folder: str) -> float:
    """What `JobView.created` says, from one stat (no file read)."""
    for name in (jobdir.CONFIG, ""):
        try:
            return os.stat(os.path.join(folder, name)).st_mtime
        except OSError:
            continue
    return 0


def all_jobs(root: Path | None = None) -> list[JobView]:
    """Every job folder, newest first (temporary folders being written are skipped)."""
    root = root or paths.jobs_root()
    views = [load(Path(e.path)) for e in _folders(root)]
    return sorted(views, key=lambda v: (v.created, v.folder.name), reverse=True)


def newest(limit: int, with_dry_runs: bool = False, root: Path | None = None) -> tuple[list[JobView], int]:
    """(the `limit` newest jobs, how many dry runs were left out): `ft jobs -n 20` reads the
    folders it shows, not every folder. The order is `all_jobs`'s, from one stat per folder;
    a folder without a record is a dry run (`dry_runs`), read to be sure only while the list
    still has room (past it, one whose config is unreadable counts among the dry runs)."""
    root = root or paths.jobs_root()
    order = sorted(((_created(e.path), e.name, e.path) for e in _folders(root)), reverse=True)
    shown: list[JobView] = []
    hidden = 0
    for _, name, path in order:
        folder = root / name
        full = len(shown) >= limit
        if not with_dry_runs and not os.path.exists(os.path.join(path, jobdir.RECORD)):  # (no Path: 10,000 of them)
            if full or dry_runs([load(folder)]):
                hidden += 1
                continue
        if full:
            if with_dry_runs:
                break
            continue
        shown.append(load(folder))
    return shown, hidden


def find(spec: str, root: Path | None = None) -> JobView:
    """A job by id, folder path, or unique prefix of its id or folder name; one task of a
    sweep by `ID_TASK` (`15_1`, as SLURM names array tasks) or by its task folder."""
    candidate = expand(spec)
    if candidate.is_dir() and (candidate / jobdir.CONFIG).exists():
        candidate = candidate.resolve()
        parent = candidate.parent
        if parent.name == layout.TASKS and candidate.name.isdigit() and (parent.parent / jobdir.CONFIG).is_file():
            return load(parent.parent).with_task(int(candidate.name))
        return load(candidate)
    array_task = _ARRAY_TASK.match(spec)
    if array_task:
        return find(array_task.group(1), root).with_task(int(array_task.group(2)))
    known = _known(spec, root or paths.jobs_root())
    if known is not None:
        return known
    views = all_jobs(root)
    for view in views:  # the index, rebuilt from the scan: the next `ft status ID` reads one folder
        jobindex.record(view.folder, [view.job_id, *view.earlier_ids])
    exact = [v for v in views if v.job_id == spec or v.folder.name == spec or spec in v.earlier_ids]
    if len(exact) == 1:
        found = exact[0]
        return dataclasses.replace(found, earlier=spec) if spec in found.earlier_ids and spec != found.job_id else found
    matches = exact or [v for v in views if (v.job_id or "").startswith(spec) or v.folder.name.startswith(spec)]
    if not matches:
        raise UserError(f"no job {spec!r} among the {len(views)} job(s) under {root or paths.jobs_root()}",
                        hint="`ft jobs` lists them; give a job id, a folder or a unique prefix")
    if len(matches) > 1:
        names = ", ".join(f"{v.job_id or '-'} ({v.folder.name})" for v in matches[:6])
        raise UserError(f"{spec!r} matches {len(matches)} jobs: {names}", hint="give more of the id or folder name")
    return matches[0]


def _known(spec: str, root: Path) -> JobView | None:
    """The job `spec` names exactly, read from the one folder the index (or its name) points
    at; None when the index has no entry, or a stale one (then every folder is read)."""
    folder = jobindex.lookup(root, spec)
    if folder is not None:
        view = load(folder)
        if view.job_id == spec:
            return view
        if spec in view.earlier_ids:
            return dataclasses.replace(view, earlier=spec)
    named = root / spec
    if not spec.startswith(".") and "/" not in spec and (named / jobdir.CONFIG).is_file():
        return load(named)
    return None


def trainer_finished(view: JobView, run: Path) -> bool:
    """The trainer wrote its end-of-run summary (trainer/metrics.py) into this run's metrics."""
    return bool(records.last_jsonl(run / layout.METRICS, records.END).get(records.END))


def _folder_state(view: JobView, run: Path | None = None) -> str:
    """The state one run's own records give (the job's first run unless named)."""
    if view.problem:
        return f"{UNREADABLE} ({view.problem})"
    run = run or view.run_dirs[0]
    events = records.events(run)
    ran = view.scheduler
    if ran is None:
        return "DRY-RUN"
    if not events:
        if ran.by_id and ran.ft_script and not view.job_id:
            return f"{UNKNOWN} ({_unfinished_submission(ran, view.record.get('submission'))}; see {jobdir.RECORD})"
        return "PENDING" if ran.by_id else "STARTING"
    last = events[-1]
    starts = [i for i, e in enumerate(events) if e[records.EVENT] == records.START]
    cancelled = any(e[records.EVENT] == records.CANCEL for e in events[starts[-1] if starts else 0:])
    if last[records.EVENT] == records.EXIT:
        code = last.get(records.CODE)
        if code != 0 and cancelled:  # `ft cancel`: the trainer checkpointed and stopped
            return "CANCELLED"
        if code == exits.REQUEUE and not ran.requeues_itself:  # ft's own script requeues, or says why not
            return "PREEMPTED (checkpointed: requeue or run again to resume)"
        return "COMPLETED" if code == 0 else f"FAILED (exit {code})"
    elsewhere = ran.running_elsewhere(view)
    if elsewhere:  # FT_HOME shared between machines: only ft there can see the processes
        return f"RUNNING on {elsewhere} (as its records say; `ft status` there checks its processes)"
    alive = ran.processes_alive(view)
    if last[records.EVENT] == records.CANCEL:
        if alive:
            return "RUNNING (cancelled: stops after writing a checkpoint)"
        return "CANCELLED"
    if last[records.EVENT] == records.REQUEUE:
        return "REQUEUED"
    if alive is False:
        # The process that records the exit is gone; the trainer's own record still says.
        if trainer_finished(view, run):
            return "COMPLETED"
        return "CANCELLED" if cancelled else "FAILED (processes gone)"
    return "RUNNING"


def _unfinished_submission(ran: Scheduler, submission: object) -> str:
    """What a record written before the scheduler answered (submit.write) means when no id followed."""
    if submission == "submitting":
        return f"its submission did not finish: {ran.submit_command} is still answering, or ft was killed"
    if submission == "interrupted":
        return (f"interrupted while {ran.submit_command} was answering: the job may exist "
                f"(look for it with {ran.lost_job_hint()})")
    return f"{ran.submit_command}'s answer was unreadable"


def _forgotten(view: JobView, folder_state: str) -> str:
    """The scheduler no longer knows the job: the folder's word, unless that says it is
    still waiting or running, which it can no longer be."""
    if folder_state.split()[0] in _LIVE_FOLDER_STATES:
        return (f"{UNKNOWN} (the scheduler no longer knows job {view.job_id} and its folder has no "
                "exit record: `ft resubmit` to run it again)")
    return folder_state


def state(view: JobView, ask_scheduler: bool = True) -> str:
    """The scheduler's word while it knows the job, the folder's after. A whole sweep: its
    tasks' states together (`2 COMPLETED, 1 RUNNING`)."""
    if view.is_sweep and view.task is None and not view.problem:
        counts: dict[str, int] = {}
        for _, task_state in task_states(view, ask_scheduler):
            counts[task_state] = counts.get(task_state, 0) + 1
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{n} {s}" for s, n in counts.items())
    folder_state = _folder_state(view)
    ran = view.scheduler
    if ask_scheduler and ran and ran.by_id and view.job_id and not view.problem:
        try:
            scheduler_state = ran.job_state(view.label)
        except UserError:
            return folder_state  # no scheduler reachable here: the folder still knows
        if not scheduler_state:
            return _forgotten(view, folder_state)
        if scheduler_state in ("COMPLETED", "FAILED") and folder_state.startswith("REQUEUED"):
            return "REQUEUED"
        if scheduler_state.startswith("PENDING") and folder_state.startswith("CANCELLED"):
            return "CANCELLED"  # `ft cancel` recorded it; SLURM is still removing it
        return scheduler_state
    return folder_state


def task_states(view: JobView, ask_scheduler: bool = True) -> list[tuple[int, str]]:
    """(task, state) for each task of a sweep: squeue's word (one call) while it lists the task."""
    queue: dict[str, str] = {}
    ran = view.scheduler
    if ask_scheduler and ran and ran.by_id and view.job_id:
        try:
            queue = ran.queue_states(job_id=view.job_id)
        except UserError:
            queue = {}
    states = []
    for run in view.run_dirs:
        task = int(run.name) if run.name.isdigit() else 0
        known = queue.get(f"{view.job_id}_{task}")
        if known in ("COMPLETED", "FAILED") and _folder_state(view, run).startswith("REQUEUED"):
            known = "REQUEUED"
        states.append((task, known or _folder_state(view, run)))
    return states


def earlier_state(view: JobView) -> str:
    """The state of the earlier submission a view was asked for by (`ft status 12` after
    `ft resubmit 12` made it 15): the scheduler's while it knows that id, else that it ended."""
    ran = view.scheduler
    try:
        known = ran.job_state(view.earlier) if ran and view.earlier else None
    except UserError:
        known = None
    return f"{known} (resubmitted as {view.label})" if known else f"ENDED (resubmitted as {view.label})"


def task_values(view: JobView) -> dict[int, str]:
    """Each sweep task's own settings (`optim.lr=1e-05`), read from tasks/<i>/config.yaml."""
    from launcher.config import differing

    runs = [run for run in view.run_dirs if run.name.isdigit()]
    configs = []
    for run in runs:
        try:
            loaded = load_yaml(read_plain(run / jobdir.CONFIG, limit=CONFIG_LIMIT_BYTES).decode(), jobdir.CONFIG)
        except (OSError, UserError, ValueError, yaml.YAMLError):
            loaded = None
        configs.append(loaded if isinstance(loaded, dict) else {})
    return {int(run.name): words for run, words in zip(runs, differing(configs))}


def is_finished(state_text: str) -> bool:
    """True when the job cannot be running (nor start by itself) any more; for a sweep's
    summary (`2 COMPLETED, 1 RUNNING`), when no task can."""
    if state_text.split()[0].isdigit():
        parts = [words[1] for words in map(str.split, state_text.split(", ")) if len(words) > 1]
    else:
        parts = [state_text.split()[0]]
    return all(word in TERMINAL_STATES or word in ("DRY-RUN", UNKNOWN, UNREADABLE) for word in parts)


def age(view: JobView) -> str:
    seconds = max(0, time.time() - view.created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def summary_rows(views: list[JobView], ask_scheduler: bool = True) -> list[dict[str, Any]]:
    # One queue listing per scheduler (squeue once, however many SLURM jobs there are).
    queues: dict[str, dict[str, str] | None] = {}
    for view in views:
        ran = view.scheduler
        if ask_scheduler and ran and ran.by_id and ran.queue not in queues:
            try:
                queues[ran.queue] = ran.queue_states()
            except UserError:
                queues[ran.queue] = None
    rows = []
    for view in views:
        try:
            folder_state = state(view, ask_scheduler=False)
            ran = view.scheduler
            states = queues.get(ran.queue) if ran else None
            known = (states or {}).get(view.job_id or "")
            if view.is_sweep and view.job_id and any(k.startswith(f"{view.job_id}_") for k in states or {}):
                known = state(view)  # some tasks still queued: each task's own word
            elif not known and states is not None and ran.ft_script and view.job_id and not view.is_sweep:
                known = _forgotten(view, folder_state)
            rows.append({
                "id": view.job_id,
                "factory": view.factory,
                "executor": view.executor,
                "state": known or folder_state,
                "progress": view.progress(),
                "age": age(view),
                "folder": str(view.folder),
            })
        except Exception as err:  # one folder ft cannot make sense of must not hide the others
            rows.append({"id": None, "factory": "?", "executor": "?", "state": f"{UNREADABLE} ({type(err).__name__}: {err})"[:200],
                         "progress": "-", "age": "-", "folder": str(view.folder)})
    return rows


def log_files(view: JobView) -> list[Path]:
    """The job's log files in the order they were written; one sweep task's with `view.task`."""
    return view.scheduler.log_files(view) if view.scheduler else []


def _read_from(path: Path, offset: int) -> bytes:
    """A log's bytes from `offset` on (the part written since the last read, when following)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read()


def _task_of_log(path: Path) -> str | None:
    """`3` for slurm-15_3.out, a sweep task's log."""
    stem = path.stem.partition("-")[2]
    return stem.partition("_")[2] or None


def log_lines(view: JobView, rank: int | None = None, follow: bool = False, poll: float = 1.0,
              on_state=None) -> Iterator[str]:
    """The job's output lines (one task's with `rank`); with `follow`, until the job has ended,
    calling `on_state(state)` with the job's state each time it changes (a pending job's
    reason included)."""
    ran = view.scheduler
    if ran is None:
        raise UserError(f"{view.folder.name} is a dry run: it has no logs (submit it with `ft resubmit {view.folder}`)")
    offsets: dict[Path, int] = {}

    def drain() -> Iterator[str]:
        for path in log_files(view):
            try:
                data = _read_from(path, offsets.get(path, 0))
            except OSError:
                continue
            # Following: keep a partial last line for the next round.
            cut = data.rfind(b"\n") + 1 if follow else len(data)
            offsets[path] = offsets.get(path, 0) + cut
            lines = data[:cut].decode(errors="replace").splitlines()
            lines = ran.rank_lines(path, lines, rank)
            task = _task_of_log(path) if view.is_sweep and view.task is None else None
            # Several tasks' logs one after another: each line says whose it is.
            yield from ([f"[task {task}] {line}" for line in lines] if task is not None else lines)

    yield from drain()
    said = None
    while follow:
        current = state(view)
        if on_state is not None and current != said:
            on_state(current)
            said = current
        finished = is_finished(current)
        yield from drain()
        if finished:
            return
        time.sleep(poll)


def cancel(view: JobView) -> JobView:
    """Cancel a pending or running job, as its scheduler does (scancel; SIGTERM to a local
    job's task groups: the trainer checkpoints and stops, and the folder reads CANCELLED).
    A job in an UNKNOWN state is cancelled as far as it can be, and its folder says so."""
    current = state(view)
    unknown = current.startswith(UNKNOWN)
    if is_finished(current) and not unknown:
        raise UserError(f"job {view.label} already ended ({current}): nothing to cancel")
    ran = view.scheduler
    if ran and (view.job_id or not ran.by_id):
        try:
            ran.cancel(view)
        except UserError:
            if not unknown:
                raise
    if ran and ran.by_id and (view.job_id or unknown):
        # The folder keeps the cancel: the scheduler forgets the job (SLURM's MinJobAge), the
        # folder does not, so it reads CANCELLED then too, not UNKNOWN.
        for run in view.run_dirs:
            records.record_event(run, records.CANCEL, job_id=view.job_id)
    return view


def dry_runs(views: list[JobView]) -> list[JobView]:
    """Folders written by `--dry-run` and never submitted (no record at all: a record ft cannot
    read is shown, not hidden)."""
    return [v for v in views if v.scheduler is None and not v.problem and not (v.folder / jobdir.RECORD).exists()]


def remove_dry_runs(views: list[JobView]) -> list[Path]:
    """Delete the folders of dry runs (never submitted, so nothing else refers to them)."""
    import shutil

    removed = []
    for view in dry_runs(views):
        try:
            # Under the folder's lock, which `ft resubmit` holds while sbatch answers: a folder
            # submitted meanwhile has a record by then, and one being submitted is skipped.
            with jobdir.locked(view.folder, wait=0):
                if (view.folder / jobdir.RECORD).exists():
                    continue
                shutil.rmtree(view.folder)
        except UserError:
            continue
        removed.append(view.folder)
    return removed
