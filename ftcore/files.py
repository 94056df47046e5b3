"""Files and folders written whole or not at all: a reader (or a crash) sees the old or the new."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ftcore.errors import UserError


def expand(path: str | Path) -> Path:
    """`~` and `~user` expanded; an unknown user is a UserError, not a RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = str(path).split("/", 1)[0]
        raise UserError(f"{path}: there is no user {user[1:]!r} on this machine to expand {user} for") from None


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(out: Path) -> Path:
    """Refuse a destination that holds anything: ft never writes over files."""
    out = expand(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose another --out, or remove it first")
    return out


@contextlib.contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; rename it to `out` once the block succeeds."""
    out = check_output(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a model folder is for sharing
        if out.is_dir():
            out.rmdir()  # empty (checked above); fails if something appeared meanwhile
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
