"""Progress as a person reads it: steps done of total, time elapsed and time left.

The trainer writes `total_steps`, `elapsed_s` and `remaining_s` into each step's record of
metrics.jsonl; its log line and `ft status` print them with these functions, so both say
the same thing in the same words.
"""

from __future__ import annotations

from typing import Any

from ftcore import records


def clock(seconds: float) -> str:
    """0:07, 12:30, 1:02:03."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def remaining(elapsed_s: float, steps_run: int, steps_left: int) -> float | None:
    """Time left at the pace of the steps run so far in this process (None before the first)."""
    if steps_run <= 0:
        return None
    return elapsed_s / steps_run * max(0, steps_left)


def steps(step: int, total: int | None) -> str:
    """`120/250 (48%)`, or the step alone when the total is unknown."""
    if not total:
        return str(step)
    return f"{step}/{total} ({100 * step // total}%)"


def times(elapsed_s: float | None, remaining_s: float | None) -> str:
    """`0:30 elapsed, 0:32 left` (either part may be unknown)."""
    parts = []
    if elapsed_s is not None:
        parts.append(f"{clock(elapsed_s)} elapsed")
    if remaining_s is not None:
        parts.append(f"{clock(remaining_s)} left")
    return ", ".join(parts)


def of_record(record: dict[str, Any], running: bool = True) -> str:
    """The progress a metrics.jsonl step record carries: `120/250 (48%), 0:30 elapsed, 0:32 left`;
    for a run that is no longer running, no time left (`120/250 (48%), 0:30 elapsed`)."""
    step = record.get(records.STEP)
    if not isinstance(step, int):
        return "-"
    text = steps(step, record.get(records.TOTAL_STEPS))
    clocks = times(record.get(records.ELAPSED_S), record.get(records.REMAINING_S) if running else None)
    return f"{text}, {clocks}" if clocks else text
