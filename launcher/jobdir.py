"""Job folders: one per submission, never shared, never half-written.

A folder is built under a hidden temporary name and renamed into place in one step, so a
reader sees either nothing or the whole folder. Names carry the time and a random suffix;
a rename onto an existing (non-empty) folder fails, and then another name is drawn.
A build that was killed leaves its temporary folder behind; the next build removes those
whose owner process is gone (see `remove_stale`). Every later change to a folder (submit,
resubmit) holds the folder's lock, so two ft commands never interleave their writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shlex
import socket
import stat
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ftcore import records
from ftcore import secrets as ft_secrets
from ftcore.errors import UserError
from ftcore.files import write_atomic
from ftcore.layout import COMMAND, CONFIG, LOGS, RECORD, SCRIPT  # noqa: F401  (the folder's names)
from launcher import __version__, paths

LOCK = ".lock"
RUN_LOCK = ".run.lock"  # held by the one process that trains in the folder (`ft train`), until it exits
TMP_PREFIX = ".tmp-"
# A temporary folder older than this whose owner process is gone is a leftover; one from
# another machine (FT_HOME on a shared filesystem) is trusted to be a leftover only after a day.
STALE_AFTER_S = 600
FOREIGN_STALE_AFTER_S = 86400
LOCK_WAIT_S = 60.0


def _host() -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:32] or "host"


def _tmp_prefix(final_name: str) -> str:
    """`.tmp-<host>-<pid>-<name>-`: who is building it, so a leftover can be told apart."""
    return f"{TMP_PREFIX}{_host()}-{os.getpid()}-{final_name}-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- which process is whose ------------------------------------------------------------------
# A pid alone names a process only until it exits: the number is reused, and on another login
# node sharing FT_HOME it names nothing. A job's record keeps a stamp per process (host, boot,
# start time in clock ticks since boot); only a live process matching its stamp is the job's.

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started (None: no such process here)."""
    try:
        line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = line[line.rfind(b")") + 2:].split()  # the command name may hold spaces and ')'
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_stamp(pid: int) -> dict[str, Any]:
    """What tells process `pid` (running now, on this machine) apart from any later holder of its number."""
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "start": _start_ticks(pid)}


def stamp_host(stamp: Any) -> str | None:
    """The host a stamp was taken on (None: not a stamp, e.g. a bare pid)."""
    host = stamp.get("host") if isinstance(stamp, dict) else None
    return host if isinstance(host, str) and host else None


def is_running(stamp: Any) -> bool:
    """Whether the process a stamp describes still runs on this machine. A bare pid, a stamp from
    another host or an earlier boot, or a pid now held by a process started at another time: no."""
    if stamp_host(stamp) != socket.gethostname() or stamp.get("boot_id") != _boot_id():
        return False
    pid, start = stamp.get("pid"), stamp.get("start")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(start, int):
        return False
    return _start_ticks(pid) == start


def stamps(record: dict) -> list:
    """The process stamps a local job's record holds (anything but a list: none)."""
    stamps = record.get("pids")
    return stamps if isinstance(stamps, list) else []


def other_host(record: dict) -> str | None:
    """The host a local job's processes were started on, when that is not this one: ft here
    cannot see them (FT_HOME shared between login nodes)."""
    hosts = {stamp_host(stamp) for stamp in stamps(record)} - {None, socket.gethostname()}
    return min(hosts) if hosts else None


def processes_alive(record: dict) -> bool | None:
    """Whether any process the record names is still the job's own (None: it names none)."""
    recorded = stamps(record)
    return any(is_running(stamp) for stamp in recorded) if recorded else None


def is_stale(tmp: Path, now: float | None = None) -> bool:
    """A temporary job folder nobody is building any more."""
    try:
        age = (now or time.time()) - tmp.stat().st_mtime
    except OSError:
        return False
    host, _, rest = tmp.name[len(TMP_PREFIX):].partition("-")
    pid_text = rest.partition("-")[0]
    if host == _host() and pid_text.isdigit():
        return age > STALE_AFTER_S and not pid_alive(int(pid_text))
    return age > FOREIGN_STALE_AFTER_S


def remove_stale(root: Path) -> list[Path]:
    """Remove leftover temporary folders of killed builds under `root`; never fails."""
    removed = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    except OSError:
        return removed
    for tmp in candidates:
        if is_stale(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def check_secrets(texts: dict[str, str]) -> None:
    """Refuse to write a file that would hold a secret's value (the last guard before disk)."""
    problems = [p for name, text in texts.items() for p in ft_secrets.find(text, name)]
    if problems:
        raise UserError(*problems)


def open_lock(folder: Path, name: str) -> int:
    """The folder's lock file `name`, opened to write: never through a link, never a FIFO's
    wait or a device (the file behind any of them is not a lock, and not ft's to write)."""
    path = folder / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"cannot lock {folder}: {path} is a symbolic link, which ft never follows",
                            hint=f"remove it (`rm {path}`): a lock file holds nothing") from None
        raise UserError(f"cannot lock {folder}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"cannot lock {folder}: {path} is not a plain file",
                        hint=f"remove it (`rm {path}`): a lock file holds nothing")
    return fd


@contextlib.contextmanager
def locked(folder: Path, wait: float | None = None) -> Iterator[None]:
    """Hold the folder's lock: a second ft command changing the same folder waits for it,
    and gives up with a message after `wait` seconds."""
    wait = LOCK_WAIT_S if wait is None else wait
    with open(open_lock(folder, LOCK), "a", closefd=True) as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise UserError(f"another ft command is changing {folder} right now",
                                    hint="wait for it to finish, then try again") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hold_run_lock(folder: Path, job_id: str | None) -> None:
    """Take the folder's run lock for this process and whatever it `exec`s (the fd is inherited),
    or refuse, naming the run that holds it. Never released by hand: the process's exit does."""
    path = folder / RUN_LOCK
    if str(path) in _HELD:  # this process holds it already (one run prepares once; tests call again)
        return
    fd = open_lock(folder, RUN_LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise UserError(f"cannot lock {folder}: {err.strerror}") from None
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        try:
            who = json.loads(holder)
            who = f"job {who.get('job_id') or '(no scheduler)'}, process {who.get('pid')} on {who.get('host')}, " \
                  f"since {who.get('time')}"
        except (ValueError, AttributeError):
            who = "another process"
        raise UserError(f"{folder} is in use: a run trains in it right now ({who})",
                        hint="wait for it to end (or cancel it); two runs in one folder would mix their "
                             "checkpoints. Another run wants another folder: --job-dir NEW_FOLDER") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"job_id": job_id, "pid": os.getpid(), "host": socket.gethostname(),
                             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
    os.set_inheritable(fd, True)  # kept across exec: the trainer holds it to its end
    _HELD[str(path)] = fd


_HELD: dict[str, int] = {}


def release_run_lock(folder: Path) -> None:
    """Let go of the run lock this process holds (a run that ends without becoming the trainer)."""
    fd = _HELD.pop(str(folder / RUN_LOCK), None)
    if fd is not None:
        os.close(fd)


def safe_name(text: str) -> str:
    """`text` as part of a folder name: letters, digits and -_. only."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:40] or "job"


def new_name(factory: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{safe_name(factory)}-{secrets.token_hex(3)}"


def create(
    factory: str,
    files: Callable[[Path], dict[str, str]],
    root: Path | None = None,
) -> Path:
    """A new complete job folder under `root`; `files(final_path)` gives its contents,
    so files may mention the folder's final path."""
    root = root or paths.jobs_root()
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root)
    for _ in range(100):
        final = root / new_name(factory)
        if not final.exists() and create_at(final, files):
            return final
    raise RuntimeError(f"could not find a free job folder name under {root}")


def create_at(final: Path, files: Callable[[Path], dict[str, str]]) -> bool:
    """Build the folder `final` whole, under a temporary name, and rename it into place.
    False (and nothing written) when `final` exists already or appeared meanwhile."""
    if not final.parent.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_tmp_prefix(final.name)))
    try:
        (tmp / LOGS).mkdir()
        texts = files(final)
        check_secrets(texts)
        for name, text in texts.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        os.rename(tmp, final)  # fails if `final` appeared meanwhile (it is never empty)
        return True
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            return False
        if err.filename is None:  # a write() says no name: the folder it was building
            err.filename = str(final)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    argv[0] = Path(argv[0]).name if argv else "ft"
    return shlex.join(argv) + "\n"


def config_text(job_dict: dict[str, Any]) -> str:
    from launcher.config import dump_yaml

    header = f"# Resolved by ft {__version__}; the trainer validates this file again.\n"
    return header + dump_yaml(job_dict)


def record_text(**fields: Any) -> str:
    """submission.json's text: the one writer of the fields ftcore.records.SUBMISSION_FIELDS names."""
    record = {"ft_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    records.check_submission(record)
    return json.dumps(record, indent=2) + "\n"


def write_record(job_folder: Path, **fields: Any) -> None:
    text = record_text(**fields)
    check_secrets({RECORD: text})
    write_atomic(job_folder / RECORD, text)
    if _under_jobs_root(job_folder):  # `ft status ID` finds it without reading every folder
        from launcher import jobindex

        history = fields.get("history") if isinstance(fields.get("history"), list) else []
        jobindex.record(job_folder, [fields.get("job_id"), *(h.get("job_id") for h in history if isinstance(h, dict))])


def _under_jobs_root(folder: Path) -> bool:
    try:
        return folder.parent.resolve() == paths.jobs_root().resolve()
    except (OSError, RuntimeError, UserError):
        return False


RECORD_LIMIT_BYTES = 4 * 2**20  # a record of thousands of resubmissions is some 100 KiB


def read_record(folder: Path) -> dict[str, Any]:
    """The folder's record; {} when there is none. A record that cannot be read raises
    ValueError (the caller lists the folder as unreadable)."""
    from ftcore.files import read_plain

    try:
        text = read_plain(folder / RECORD, limit=RECORD_LIMIT_BYTES).decode()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ValueError(f"{RECORD}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{RECORD} is not text") from None
    try:
        record = json.loads(text)
    except ValueError:
        raise ValueError(f"{RECORD} is not valid JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"{RECORD} does not hold a JSON object")
    return record
