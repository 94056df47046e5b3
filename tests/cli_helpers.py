"""What the tests read from `ft`'s own output."""

from __future__ import annotations

from pathlib import Path


def folder_of(output: str) -> Path:
    """The job folder `ft submit` printed ("Job folder: PATH")."""
    line = next(l for l in output.splitlines() if "Job folder: " in l)
    return Path(line.split("Job folder: ", 1)[1].strip())
