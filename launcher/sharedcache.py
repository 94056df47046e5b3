"""Caches several users share (`container.cache_dir`, `hub.cache_dir`): usable by the group,
trusted only as far as their owners are.

* Locks: a lock file is created group-writable (0664, as huggingface_hub makes its own), so
  the first user's lock never shuts out the rest of the group; folders ft makes inside a
  setgid (group-shared) folder are group-writable too, and the kernel passes the group on.
  Elsewhere the user's umask decides.
* Trust: a job runs what is in the cache, so a file there counts only when you, root or an
  owner named in `trusted_owners` (a user, `uid:N` for an owner without a name here, or
  `group:NAME` for the members of a group) owns it; anything else is refused with the owner's
  name. An image ft pulled also carries its sha256 (`.<sif>.sha256`, written at the pull),
  checked before the image is used: an image without one is not verified, and refused.
* A lock file is opened without following a link and changed only when it is a plain file of
  the user's own: a link planted in the shared folder never lends its target the lock's mode.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import hashlib
import json
import os
import pwd
import stat
from pathlib import Path
from typing import Iterable, Iterator

from ftcore.errors import UserError
from ftcore.files import write_atomic
from launcher import paths

LOCK_MODE = 0o664


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _group_shared(folder: Path) -> bool:
    """The nearest existing folder at or above `folder` is setgid: the site shares it with a group."""
    for candidate in (folder, *folder.parents):
        try:
            return bool(candidate.stat().st_mode & stat.S_ISGID)
        except FileNotFoundError:
            continue
    return False


def make_dir(folder: Path) -> Path:
    """`folder` and its missing parents; group-writable where the cache is group-shared (setgid)."""
    shared = _group_shared(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    if shared:
        for created in missing:
            with contextlib.suppress(OSError):  # made by someone else meanwhile (or a link): theirs to set
                fd = os.open(created, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    if os.fstat(fd).st_uid == os.getuid():
                        os.fchmod(fd, (0o777 & ~_umask()) | 0o070 | stat.S_ISGID)
                finally:
                    os.close(fd)
    return folder


@contextlib.contextmanager
def lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created group-writable), waiting for its holder."""
    make_dir(path.parent)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            raise _lock_refused(path, err) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _open_lock(path: Path) -> int:
    """The lock file's descriptor: never through a link (ELOOP: refused), never a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, LOCK_MODE)
    except PermissionError:
        try:  # a lock file an older ft made 0644: a read-only handle takes the lock on a local disk
            fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
        except OSError as err:
            raise _lock_refused(path, err) from None
    except OSError as err:
        raise _lock_refused(path, err) from None
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        raise UserError(f"cannot take the lock {path}: it is not a plain file (someone made it {_kind(found)})",
                        hint=f"remove it (`rm {path}`): a lock file holds nothing")
    # Not cut back by the umask, so the group can open it too; only a file of one's own, with
    # one name (a hard link to another file of the user's is not the user's lock file).
    if found.st_uid == os.getuid() and found.st_nlink == 1 and stat.S_IMODE(found.st_mode) != LOCK_MODE:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, LOCK_MODE)
    return fd


def _kind(found: os.stat_result) -> str:
    return "a FIFO" if stat.S_ISFIFO(found.st_mode) else "a device" if stat.S_ISCHR(found.st_mode) or \
        stat.S_ISBLK(found.st_mode) else "a folder" if stat.S_ISDIR(found.st_mode) else "a special file"


def _lock_refused(path: Path, err: OSError) -> UserError:
    if err.errno == errno.ELOOP:
        return UserError(f"cannot take the lock {path}: it is a symbolic link (to {_link_target(path)}), which ft "
                         "never follows", hint=f"remove it (`rm {path}`): a lock file holds nothing, and a link there "
                                               "is someone else's doing")

    owner = owner_name(path)
    return UserError(f"cannot take the lock {path} ({err.strerror or err}): it belongs to {owner} and is "
                     "not writable by you",
                     hint=f"ask {owner} to run `chmod g+w {path}` (or remove it: a lock file holds nothing)")


# --------------------------------------------------------------------------- who owns what


def owner_name(path: Path) -> str:
    """The owner as trusted_owners names it: a user name, else `uid:N` (no name here)."""
    try:
        uid = path.lstat().st_uid
    except OSError:
        return "nobody (gone)"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _trusted_uids(trusted_owners: Iterable[str]) -> set[int]:
    """You, root and the named owners (`uid:N`: the owner of that id; `group:NAME`: every
    member of group NAME)."""
    uids = {os.getuid(), 0}
    for name in trusted_owners:
        try:
            if name.startswith("uid:") and name[4:].isdigit():
                uids.add(int(name[4:]))
            elif name.startswith("group:"):
                group = grp.getgrnam(name.removeprefix("group:"))
                uids |= {pwd.getpwnam(member).pw_uid for member in group.gr_mem}
                uids |= {user.pw_uid for user in pwd.getpwall() if user.pw_gid == group.gr_gid}
            else:
                uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue  # an owner unknown here trusts no one
    return uids


def untrusted(paths_: Iterable[Path], trusted_owners: Iterable[str], setting: str) -> str | None:
    """Why the files `paths_` (each, not what a link points at) may not be used, or None."""
    uids = _trusted_uids(trusted_owners)
    for path in paths_:
        try:
            uid = path.lstat().st_uid
        except OSError:
            continue
        if uid not in uids:
            return (f"{path} belongs to {owner_name(path)}, not to you or an owner you trust; "
                    f"add `{owner_name(path)}` (or `group:NAME`) to {setting} in your site profile if you "
                    "trust what they put in the cache, or remove the file")
    return None


# --------------------------------------------------------------------------- digests of what ft pulled


def digest_path(image: Path) -> Path:
    return image.with_name(f".{image.name}.sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def record_digest(image: Path, digest: str) -> None:
    write_atomic(digest_path(image), f"{digest}  {image.name}\n")


def _verified_key(image: Path) -> str:
    """Whatever changes when the file does (ctime: no user can set it back)."""
    s = image.stat()
    key = [str(image.absolute()), s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_uid]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


DIGEST_LIMIT_BYTES = 4096


def digest_problem(image: Path) -> str | None:
    """Whether `image` still has the sha256 recorded when ft pulled it (None: yes). No record
    (or an unreadable one) means not verified, never fine. A file seen unchanged since its last
    check is not read again."""
    recorded = digest_path(image)
    expected = _recorded_digest(recorded)
    if expected is None:
        return (f"{image} has no sha256 recorded by the pull that made it ({recorded} is missing or not a plain "
                "file ft wrote), so ft cannot tell that it is the image it pulled; remove it and pull again")
    memo = paths.ft_home() / "image-checks" / f"digest-{_verified_key(image)}"
    if memo.is_file() and memo.read_text().strip() == expected:
        return None
    actual = sha256_of(image)
    if actual != expected:
        return (f"{image} is not the image ft pulled: its sha256 is {actual[:16]}…, the pull recorded "
                f"{expected[:16]}… in {recorded}; remove both and pull again")
    memo.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        memo.write_text(actual + "\n")
    return None


def _recorded_digest(recorded: Path) -> str | None:
    """The hex digest in a `.sha256` file: a plain file, read bounded, never through a link."""
    try:
        fd = os.open(recorded, os.O_RDONLY | _NO_FOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        words = handle.read(DIGEST_LIMIT_BYTES).decode(errors="replace").split()
    digest = words[0] if words else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None
