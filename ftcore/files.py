"""Files and folders written whole or not at all: a reader (or a crash) sees the old or the new."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
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


def read_plain(path: Path, offset: int = 0, limit: int | None = None, follow: bool = True) -> bytes:
    """At most `limit` bytes of the regular file `path` from `offset` on (a negative offset counts
    from the end), never more than it holds: a FIFO (which would wait for ever), a device
    (/dev/zero, endless) or a folder raises OSError, as a missing file does; `follow=False`
    refuses a symbolic link too (ELOOP)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if offset < 0:
            offset = max(0, info.st_size + offset)
        handle.seek(offset)
        wanted = max(0, info.st_size - offset) if limit is None else max(0, min(limit, info.st_size - offset))
        return handle.read(wanted)


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


def check_output(out: Path, overwrite: bool = False, source: Path | None = None) -> Path:
    """Refuse a destination that holds anything, unless `overwrite` (then it is replaced whole,
    only once the new folder is complete): ft never writes over files. Refuse one inside the
    `source` folder being read, always (a checkpoint would hold its own export)."""
    out = expand(out)
    if source is not None:
        inside, folder = out.absolute().resolve(), Path(source).absolute().resolve()
        if inside == folder or folder in inside.parents:
            raise UserError(f"--out {out} is inside {folder}, the folder being read: choose a folder outside it")
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
        try:
            yield tmp
        except Exception as err:
            full = _as_full_disk(err, out)
            if full is err:
                raise
            raise full from None
        if stamp is not None:
            (tmp / OUTPUT_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        _shareable(tmp)  # mkdtemp makes it 0700, and some writers 0600 files; a model folder is for sharing
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


def _shareable(folder: Path) -> None:
    """Modes as a plain `mkdir`/`open` under the user's umask would give them."""
    umask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _as_full_disk(err: Exception, out: Path) -> Exception:
    """A full disk as OSError(ENOSPC), also when a library wraps it in its own error (safetensors
    says `IoError(Os { code: 28, kind: StorageFull ... })`), so it reads as one line."""
    import errno

    if isinstance(err, OSError):
        return err
    text = str(err)
    if "No space left on device" in text or "StorageFull" in text or "code: 28," in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
    if "Disk quota exceeded" in text or "code: 122," in text:
        return OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(out))
    return err


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
