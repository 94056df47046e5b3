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


# Written into each folder ft merge/export make: what it was made from, so a re-run knows
# whether the folder is current (the folder itself appears whole, by one rename).
OUTPUT_STAMP = "ft_output.json"


def check_output(out: Path, overwrite: bool = False) -> Path:
    """Refuse a destination that holds anything, unless `overwrite` (then it is replaced whole,
    only once the new folder is complete): ft never writes over files."""
    out = expand(out)
    if overwrite and out.is_dir():
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose another --out, or --overwrite to replace it")
    return out


def made_from(out: Path, stamp: dict) -> bool:
    """`out` is a complete folder that ft made from exactly `stamp` (the same source and settings)."""
    import json

    try:
        return json.loads((expand(out) / OUTPUT_STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def output_folder(out: Path, overwrite: bool = False, stamp: dict | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; rename it to `out` once the block succeeds (with
    `stamp` written into it). `overwrite`: an existing `out` is moved aside first and removed
    after, so `out` is never half old, half new."""
    import json

    out = check_output(out, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        yield tmp
        if stamp is not None:
            (tmp / OUTPUT_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a model folder is for sharing
        old = None
        if overwrite and out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".old-{out.name}-"))
            os.rename(out, old / out.name)
        elif out.is_dir():
            out.rmdir()  # empty (checked above); fails if something appeared meanwhile
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
