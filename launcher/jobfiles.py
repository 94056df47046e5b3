"""The job folder's files, wherever the folder lies: the seam `jobs`, `plot` and `logs` read
through, so that a folder on a cluster (launcher/remote.py) is just another implementation.

    files = LocalFiles(folder)
    files.read_bytes("metrics.jsonl"); files.read_from("logs/rank-0.out", offset)
    files.tail("metrics.jsonl", 16384); files.glob("logs/slurm-*.out")

Names are relative to the folder (a path under it is accepted too). A missing or unreadable
file raises OSError, as reading a local file does; callers decide what that means.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from ftcore.files import write_atomic


class JobFiles:
    """One job folder's files: read records, metrics and logs; write the folder's files."""

    root: PurePath

    def read_bytes(self, name: str | PurePath) -> bytes:
        return self.read_from(name, 0)

    def read_from(self, name: str | PurePath, offset: int) -> bytes:
        """The bytes from `offset` on (a log being followed)."""
        raise NotImplementedError

    def tail(self, name: str | PurePath, size: int) -> bytes:
        """At most the last `size` bytes (the last record of a large, growing file)."""
        raise NotImplementedError

    def glob(self, pattern: str, by_time: bool = False) -> list[PurePath]:
        """The paths matching `pattern` under the folder, by name (oldest first with `by_time`)."""
        raise NotImplementedError

    def write(self, files: dict[str, str]) -> None:
        """Write each file whole (a reader sees the old text or the new, never a torn one)."""
        raise NotImplementedError


class LocalFiles(JobFiles):
    """A folder on this machine's disk (or a shared filesystem mounted here)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, name: str | PurePath) -> Path:
        return self.root / name

    def read_from(self, name: str | PurePath, offset: int) -> bytes:
        with open(self._path(name), "rb") as handle:
            handle.seek(offset)
            return handle.read()

    def tail(self, name: str | PurePath, size: int) -> bytes:
        with open(self._path(name), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read()

    def glob(self, pattern: str, by_time: bool = False) -> list[PurePath]:
        def mtime(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:
                return 0

        found = sorted(self.root.glob(pattern))
        return sorted(found, key=mtime) if by_time else found

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            path = self._path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
