"""Which folder holds job ID: one small file per id under `$FT_HOME/.jobs-index/`, so that
`ft status ID` reads one folder instead of every folder.

The index is a cache of what the folders' records say, never the truth: each entry is its
own file written whole (renamed into place: no shared file to rewrite, so two writers never lose
each other's entries), a reader checks the folder it names still records that id, and a
missing, damaged or stale entry sends the reader to the full scan, which writes the entries
it finds. Deleting the index folder loses nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from ftcore.files import read_plain

IDS = "ids"
_NAME_MAX = 255  # a folder name's bytes on Linux filesystems


def folder(root: Path) -> Path:
    """The index of the job folders under `root`: beside it, so `root` holds job folders only."""
    return root.parent / f".{root.name}-index"


def _entry(root: Path, job_id: str) -> Path:
    return folder(root) / IDS / job_id


def _indexable(job_id: object) -> bool:
    # A SLURM id (`15`, `15_3`): digits and one underscore, so never a path.
    return isinstance(job_id, str) and job_id.isascii() and job_id.replace("_", "", 1).isdigit() and len(job_id) < 40


def record(job_folder: Path, job_ids: Iterable[object]) -> None:
    """Note that `job_folder` (directly under the jobs root) holds these ids. Never fails: a
    missing entry costs a scan, not a record."""
    root = job_folder.parent
    for job_id in job_ids:
        if not _indexable(job_id):
            continue
        entry = _entry(root, job_id)
        try:
            if _current(entry) == job_folder.name:
                continue
            entry.parent.mkdir(parents=True, exist_ok=True)
            _write(entry, job_folder.name)
        except (OSError, UnicodeDecodeError):
            pass


def _write(entry: Path, text: str) -> None:
    """Whole or absent (a rename), without `write_atomic`'s fsync: an entry lost to a crash
    costs one scan, and a scan may write thousands of them."""
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, entry)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current(entry: Path) -> str | None:
    """The folder name an entry holds; None for a missing or damaged one. An entry is ft's own
    small file: a link, a FIFO or a device there is damage, read no further."""
    try:
        return read_plain(entry, limit=_NAME_MAX + 1, follow=False).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None


def lookup(root: Path, job_id: str) -> Path | None:
    """The folder the index names for `job_id`, if it names one that exists (unchecked)."""
    if not _indexable(job_id):
        return None
    name = _current(_entry(root, job_id))
    if not name or len(name.encode()) > _NAME_MAX or "/" in name or "\0" in name or name.startswith("."):
        return None  # damaged: the scan answers and rewrites it
    found = root / name
    try:
        return found if found.is_dir() else None
    except OSError:
        return None
