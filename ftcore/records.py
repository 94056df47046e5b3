"""The job folder's records: what the launcher and the trainer tell each other through files.

Each record has its fields defined here, one writer, and readers that import these names:

    events.jsonl     EVENT_FIELDS (+ per-event extras); written by `record_event` (the trainer's
                     rank 0, local runs, `ft train`, `ft cancel`) and by the sbatch script's
                     `ft_event`, whose printf line `event_shell` makes from the same fields
    metrics.jsonl    the STEP ... BEST_STEP keys; written by trainer.metrics.Metrics (rank 0)
    submission.json  SUBMISSION_FIELDS; written by launcher.jobdir.record_text, which refuses others

Torn or foreign lines are skipped by the readers (`read_jsonl`, `last_jsonl`): a record may
be read while its writer appends to it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ftcore.files import read_plain
from ftcore.layout import EVENTS

# --- events.jsonl: the run's own record of start, signal, requeue and exit ------------------------

EVENT = "event"  # the event's name, one of the names below
TIME = "time"  # UTC, TIME_FORMAT
JOB_ID = "job_id"  # the scheduler's job id ("" outside a scheduler)
RESTART = "restart"  # SLURM_RESTART_COUNT: 0, then 1 after the first requeue, ...
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The fields every line of the sbatch script carries, in order, and their JSON type.
EVENT_FIELDS = ((EVENT, str), (TIME, str), (JOB_ID, str), (RESTART, int))

START, SIGNAL, EXIT, REQUEUE, CANCEL = "start", "signal", "exit", "requeue", "cancel"
# Fields some events add.
NODES = "nodes"  # start: the allocation's node list
CODE = "code"  # exit: the exit status
EXECUTOR, PIDS = "executor", "pids"  # start of a local run: its executor and process ids


def record_event(run_dir: Path, name: str, **fields: Any) -> None:
    """Append one event to `run_dir`/events.jsonl, in the form ft's sbatch script writes.

    One write with O_APPEND, so lines from several writers never interleave."""
    record = {EVENT: name, TIME: time.strftime(TIME_FORMAT, time.gmtime()), **fields}
    fd = os.open(run_dir / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def event_shell() -> dict[str, str]:
    """The sbatch script's `ft_event NAME [EXTRA]`, made from EVENT_FIELDS: printf's format (the
    same JSON `record_event` writes) and arguments, and each event's extra fields, for the template."""
    fmt = ", ".join(f'"{name}": ' + ('"%s"' if kind is str else "%s") for name, kind in EVENT_FIELDS)
    values = {EVENT: '"$1"', TIME: f'"$(date -u +{TIME_FORMAT})"', JOB_ID: '"$SLURM_JOB_ID"',
              RESTART: '"${SLURM_RESTART_COUNT:-0}"'}
    return {
        "format": "{" + fmt + "%s}",
        "args": " ".join(values[name] for name, _ in EVENT_FIELDS) + ' "${2:-}"',
        START: f'", \\"{NODES}\\": \\"$SLURM_JOB_NODELIST\\""',
        EXIT: f'", \\"{CODE}\\": $status"',
    }


# --- metrics.jsonl: one line per logged step, validation and the run's end ------------------------

STEP = "step"
EPOCH, LOSS, GRAD_NORM, LR, MEM_GIB, TPS = "epoch", "loss", "grad_norm", "lr", "mem_gib", "tps"  # a logged step
TOTAL_STEPS, ELAPSED_S, REMAINING_S = "total_steps", "elapsed_s", "remaining_s"  # its progress
VAL_LOSS, VAL_TOKENS = "val_loss", "val_tokens"  # a validation
END, CHECKPOINT = "end", "checkpoint"  # the run's summary (END is true), with its final checkpoint
FINAL_VAL_LOSS, BEST_VAL_LOSS, BEST_STEP = "final_val_loss", "best_val_loss", "best_step"
WALL_TIME = "time"  # seconds since the epoch, on every line
# Preference tuning (objective.name=dpo, orpo), named as TRL names them, on logged steps; a
# validation writes each with VAL_PREFIX (`val_rewards/margins`).
REWARDS_CHOSEN, REWARDS_REJECTED = "rewards/chosen", "rewards/rejected"
REWARDS_ACCURACIES, REWARDS_MARGINS = "rewards/accuracies", "rewards/margins"
LOGPS_CHOSEN, LOGPS_REJECTED = "logps/chosen", "logps/rejected"
PREFERENCE = (REWARDS_CHOSEN, REWARDS_REJECTED, REWARDS_ACCURACIES, REWARDS_MARGINS, LOGPS_CHOSEN, LOGPS_REJECTED)
NLL_LOSS, LOG_ODDS_RATIO, LOG_ODDS_CHOSEN = "nll_loss", "log_odds_ratio", "log_odds_chosen"  # ORPO's too
VAL_PREFIX = "val_"


# --- submission.json: ft's record of how the folder was submitted ---------------------------------

SUBMISSION_FIELDS = {
    "ft_version": "the ft that wrote the record",
    "time": "when (local time with its offset)",
    "executor": "slurm, local, srun, torchrun or dry-run",
    "job_id": "the scheduler's id; null before sbatch answered, and for local runs",
    "factory": "the factory or job name",
    "folder": "the job folder",
    "history": "earlier submissions of this folder, oldest first (executor, job_id, time)",
    "submission": "submitting, interrupted or unclear while sbatch's answer is not known",
    "sbatch_answer": "what sbatch printed when its answer could not be read (secrets redacted)",
    "pids": "local runs and ft train: the processes, with their start stamps",
    "submit_dir": "ft train: the folder the command ran in",
    "runs": "a short job after training (`ft eval --tasks`): its command, the run it reads, where its results go",
}


def check_submission(fields: dict[str, Any]) -> None:
    """A writer passing a field the schema does not name is a bug in ft, not in the input."""
    unknown = sorted(set(fields) - set(SUBMISSION_FIELDS))
    if unknown:
        raise TypeError(f"submission.json has no field {', '.join(unknown)} (ftcore.records.SUBMISSION_FIELDS)")


# --- readers ---------------------------------------------------------------------------------------


# The last record of a growing file lies in its last few KB.
TAIL_BYTES = 16384


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """The JSON-object lines of a file's bytes (a folder on this disk or another machine's);
    a torn or foreign line is skipped."""
    records = []
    for line in data.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(record, dict):
            records.append(record)
    return records


def last_of(data: bytes, wanted: str | None = None) -> dict[str, Any]:
    """The last complete record (holding `wanted`) of a file's bytes, or of its tail."""
    for record in reversed(parse_jsonl(data)):
        if wanted is None or wanted in record:
            return record
    return {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a plain file; a torn or foreign line is skipped."""
    try:
        return parse_jsonl(read_plain(path))
    except OSError:
        return []


def last_jsonl(path: Path, wanted: str | None = None) -> dict[str, Any]:
    """The last complete JSON-object line (holding `wanted`) of a file that may be large and growing."""
    try:
        return last_of(read_plain(path, -TAIL_BYTES), wanted)
    except OSError:
        return {}


def only_events(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of events.jsonl that name an event."""
    return [e for e in lines if isinstance(e.get(EVENT), str)]


def events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events, oldest first (lines without an event name skipped)."""
    return only_events(read_jsonl(run_dir / EVENTS))
