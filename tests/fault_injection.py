"""Fault injection: run some work in a forked child that is killed (SIGKILL) at its N-th
write, or sees that write fail (ENOSPC), for N = 1, 2, ... until the work gets through.

Every file opened for writing is wrapped so that the fatal write stops half-way through its
data; renames, replaces, folder creations and removals are caught by an audit hook just
before they happen. Used by tests/launcher/test_faults.py and the trainer's metrics test."""

from __future__ import annotations

import builtins
import errno
import io
import os
import signal
import sys
from typing import Callable

import pytest

from ftcore.errors import UserError

KILL, FAIL = "kill", "fail"
_AUDITED = {"os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate",
            "os.chmod", "os.link", "os.symlink"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC




def in_child(work: Callable[[], None], at: int, mode: str) -> str:
    """Run `work` in a forked child that dies (or sees ENOSPC) at its `at`-th write.
    Returns "done" (no `at`-th write), "killed" or "failed"."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            count = 0

            def hit() -> None:
                nonlocal count
                count += 1
                if count == at:
                    if mode == KILL:
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")

            class HalfWriter:
                """A file whose write stops half-way at the fatal count."""

                def __init__(self, handle):
                    self._handle = handle

                def write(self, data):
                    nonlocal count
                    if count + 1 == at:
                        self._handle.write(data[: len(data) // 2])
                        self._handle.flush()
                    hit()
                    return self._handle.write(data)

                def __getattr__(self, name):
                    return getattr(self._handle, name)

                def __enter__(self):
                    self._handle.__enter__()
                    return self

                def __exit__(self, *exc):
                    return self._handle.__exit__(*exc)

                def __iter__(self):
                    return iter(self._handle)

            real_open = io.open

            def counting_open(file, mode="r", *args, **kwargs):
                handle = real_open(file, mode, *args, **kwargs)
                return HalfWriter(handle) if any(c in mode for c in "wax+") else handle

            io.open = builtins.open = counting_open

            def audit(event, args):
                if event in _AUDITED:
                    hit()
                elif event == "open" and args[1] is None and isinstance(args[2], int) and args[2] & _WRITE_FLAGS:
                    hit()  # os.open (mkstemp)

            sys.addaudithook(audit)
            try:
                work()
            except (UserError, OSError):
                os._exit(3 if count >= at else 1)
            os._exit(3 if count >= at else 0)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    code = os.WEXITSTATUS(status)
    assert code in (0, 1, 3), f"the child crashed (exit {code})"
    return "failed" if code == 3 else "done"


def every_write(work: Callable[[], None], check: Callable[[int, str], None], mode: str,
                reset: Callable[[], None] = lambda: None, limit: int = 200) -> int:
    """Interrupt `work` at each of its writes in turn; `check` the folder after each."""
    for at in range(1, limit):
        reset()
        outcome = in_child(work, at, mode)
        check(at, outcome)
        if outcome == "done":
            return at - 1
    pytest.fail(f"more than {limit} writes")


def finish_or_show_threads(proc, timeout: float) -> tuple[str, str]:
    """`proc.communicate(timeout)`; a process still running then is made to print where each
    of its threads is (faulthandler, when started with PYTHONFAULTHANDLER=1) and the test fails
    with that, instead of a bare TimeoutExpired."""
    import subprocess

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout:.0f} s; its threads:\n{err[-6000:]}\nits output:\n{out[-2000:]}")
