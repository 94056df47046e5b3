"""The job folder's files, wherever the folder lies: the seam `jobs`, `plot` and `logs` read
through, so that a folder on a cluster (launcher/remote.py) is just another implementation.

    files = LocalFiles(folder)
    files.read_bytes("metrics.jsonl"); files.read_from("logs/rank-0.out", offset)
    files.tail("metrics.jsonl", 16384); files.glob("logs/slurm-*.out")

Names are relative to the folder (a path under it is accepted too). A missing or unreadable
file raises OSError, as reading a local file does; callers decide what that means.
"""

from __future__ import annotations

import errno
import os
import stat
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


def read_plain(path: Path, offset: int = 0, limit: int | None = None, follow: bool = True) -> bytes:
    """At most `limit` bytes of the regular file `path` from `offset` on, never more than it
    holds: a FIFO (which would wait for ever), a device (/dev/zero, endless) or a folder raises
    OSError, as a missing file does; `follow=False` refuses a symbolic link too (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(fd).st_size
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a plain file", str(path))
        if offset < 0:  # from the end
            offset = max(0, size + offset)
        handle.seek(offset)
        wanted = max(0, size - offset) if limit is None else max(0, min(limit, size - offset))
        return handle.read(wanted)


class LocalFiles(JobFiles):
    """A folder on this machine's disk (or a shared filesystem mounted here)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, name: str | PurePath) -> Path:
        return self.root / name

    def read_from(self, name: str | PurePath, offset: int) -> bytes:
        return read_plain(self._path(name), offset)

    def tail(self, name: str | PurePath, size: int) -> bytes:
        return read_plain(self._path(name), -size) if size > 0 else b""

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
