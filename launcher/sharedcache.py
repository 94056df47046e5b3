"""Caches several users share (`container.cache_dir`, `hub.cache_dir`): usable by the group,
trusted only as far as their owners are.

* Locks: a lock file is created group-writable (0664, as huggingface_hub makes its own), so
  the first user's lock never shuts out the rest of the group; folders ft makes inside a
  setgid (group-shared) folder are group-writable too, and the kernel passes the group on.
  Elsewhere the user's umask decides.
* Trust: a job runs what is in the cache, so a file there counts only when you, root or an
  owner named in `trusted_owners` (a user, or `group:NAME` for the members of a group) owns
  it; anything else is refused with the owner's name. An image ft pulled also carries its
  sha256 (`.<sif>.sha256`, written at the pull), checked before the image is used.
"""

from __future__ import annotations

import contextlib
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
            with contextlib.suppress(OSError):  # made by someone else meanwhile: theirs to set
                os.chmod(created, (0o777 & ~_umask()) | 0o070 | stat.S_ISGID)
    return folder


@contextlib.contextmanager
def lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created group-writable), waiting for its holder."""
    make_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
    except PermissionError:
        fd = None
    if fd is not None:
        with contextlib.suppress(PermissionError):  # someone else's lock file: its mode is theirs
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, LOCK_MODE)  # not cut back by the umask: the group must open it too
    else:
        try:  # a lock file an older ft made 0644: a read-only handle takes the lock on a local disk
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise _lock_refused(path, err) from None
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


def _lock_refused(path: Path, err: OSError) -> UserError:
    owner = owner_name(path)
    return UserError(f"cannot take the lock {path} ({err.strerror or err}): it belongs to {owner} and is "
                     "not writable by you",
                     hint=f"ask {owner} to run `chmod g+w {path}` (or remove it: a lock file holds nothing)")


# --------------------------------------------------------------------------- who owns what


def owner_name(path: Path) -> str:
    try:
        uid = path.lstat().st_uid
    except OSError:
        return "nobody (gone)"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _trusted_uids(trusted_owners: Iterable[str]) -> set[int]:
    """You, root and the named owners (`group:NAME`: every member of group NAME)."""
    uids = {os.getuid(), 0}
    for name in trusted_owners:
        try:
            if name.startswith("group:"):
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


def digest_problem(image: Path) -> str | None:
    """Whether `image` still has the sha256 recorded when ft pulled it (None: yes, or none recorded).
    A file seen unchanged since its last check is not read again."""
    recorded = digest_path(image)
    if not recorded.is_file():
        return None
    memo = paths.ft_home() / "image-checks" / f"digest-{_verified_key(image)}"
    if memo.is_file():
        return None
    expected = recorded.read_text().split()[0] if recorded.read_text().split() else ""
    actual = sha256_of(image)
    if actual != expected:
        return (f"{image} is not the image ft pulled: its sha256 is {actual[:16]}…, the pull recorded "
                f"{expected[:16]}… in {recorded}; remove both and pull again")
    memo.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        memo.write_text(actual + "\n")
    return None
