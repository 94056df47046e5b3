"""Let another local user reach what a test runs as them, wherever the checkout lies.

A clone in a 0700 home (Debian's /root, RHEL's /home/*) shuts every other user out of the
checkout and of a virtualenv inside it. `entered_by(users, paths)` gives exactly those users
search permission (an ACL entry `u:USER:x`: enter, not list) on each folder above `paths`
that they cannot enter, and removes exactly the entries it added afterwards.
scripts/ssh-up.sh does the same for the `--cluster` tests' user, for as long as its sshd runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def can_enter(user: str, folder: Path) -> bool:
    return subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(folder)]).returncode == 0


def folders_above(path: Path) -> list[Path]:
    """`/`, then each folder down to `path` itself (when it is a folder)."""
    resolved = Path(os.path.realpath(path))
    chain = [*reversed(resolved.parents), resolved]
    return [folder for folder in chain if folder.is_dir()]


@contextmanager
def entered_by(users: Iterable[str], paths: Iterable[Path]) -> Iterator[None]:
    users, added = list(users), []
    if not shutil.which("setfacl"):
        raise RuntimeError("setfacl not found: apt-get install acl (.ci/run installs it)")
    try:
        for path in paths:
            for folder in folders_above(path):
                for user in users:
                    if (user, folder) not in added and not can_enter(user, folder):
                        subprocess.run(["setfacl", "-m", f"u:{user}:x", str(folder)], check=True)
                        added.append((user, folder))
        yield
    finally:
        for user, folder in reversed(added):
            subprocess.run(["setfacl", "-x", f"u:{user}", str(folder)], check=False)
