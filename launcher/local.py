"""`--executor local`: the same job, same folder, trainer in local processes instead of srun.

One process per task (num_nodes × devices) with torchrun's variables, so the trainer needs
no special case. In the foreground rank 0's log streams to the terminal and the exit status
is the job's; `--detach` returns at once and leaves the processes running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ftcore import layout, records
from ftcore.errors import UserError
from launcher import jobdir, render, runtime, stage
from launcher.scheduler import Scheduler
from ftcore.schema import Job


class Local(Scheduler):
    """Processes on this machine, started and followed by `run` (the CLI calls it once the folder
    is written). Also what an `ft train` record names when nothing started the process (it ran alone)."""

    name = "local"
    runs_here = True

    def run(self, job: Job, folder: Path, detach: bool = False, history: list | None = None) -> int:
        return run(job, folder, detach=detach, history=history)

    def time_limit(self, job: Job) -> str:
        return "none (local)"

    def preflight(self, job: Job, dry_run: bool) -> list[str]:
        problem = runtime.of(job.container).local_problem()
        return [problem] if problem else []

    def render(self, job: Job, folder: Path, array_size: int = 0, dependency: str | None = None,
               command: list[str] | None = None) -> str:
        """The sbatch script, written into the folder as for SLURM: `ft resubmit --executor
        slurm` can submit the same folder later."""
        return render.render_sbatch(job, folder, array_size=array_size, dependency=dependency, command=command)

    def processes_alive(self, view) -> bool | None:
        return jobdir.processes_alive(view.record)

    def running_elsewhere(self, view) -> str | None:
        return jobdir.other_host(view.record)

    def cancel(self, view) -> None:
        cancel(view.record, view.label, view.run_dirs[0])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def event(folder: Path, name: str, **fields: object) -> None:
    """The same event record the sbatch script writes, so `ft status` reads both alike."""
    records.record_event(folder, name, **fields)


def start(job: Job, folder: Path) -> list[subprocess.Popen[bytes]]:
    argv = render.trainer_argv(job, folder / jobdir.CONFIG)
    port = str(_free_port())
    procs = []
    for rank in range(job.world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(job.world_size), LOCAL_WORLD_SIZE=str(job.world_size),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PYTHONUNBUFFERED="1",
                   **stage.environment(job))
        log = open(folder / layout.LOGS / layout.rank_log(rank), "ab")
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        log.close()
    return procs


def run(job: Job, folder: Path, detach: bool = False, echo=sys.stdout.write, history: list | None = None) -> int:
    """Run the job here. Foreground: follow rank 0's log, return the job's exit status.
    Detached: a supervisor process (`python -m launcher.local FOLDER`) does the same in the
    background, so the folder still records the exit. `history`: the folder's earlier
    submissions (`ft resubmit`), kept in its record."""
    history = history or jobdir.read_record(folder).get("history", [])
    if detach:
        supervisor = subprocess.Popen([sys.executable, "-m", "launcher.local", str(folder)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(folder / layout.LOGS / layout.SUPERVISOR_LOG, "ab"),
                                      start_new_session=True, env=dict(os.environ, PYTHONPATH=_pythonpath()))
        jobdir.write_record(folder, executor="local", job_id=None, factory=job.name,
                            folder=str(folder), pids=[jobdir.process_stamp(supervisor.pid)], history=history)
        return 0
    log = folder / layout.LOGS / layout.rank_log(0)
    shown = log.stat().st_size if log.exists() else 0  # a resumed job's log goes on: show the new part
    procs = start(job, folder)
    event(folder, "start", executor="local", pids=[p.pid for p in procs])
    stamps = [jobdir.process_stamp(pid) for pid in (os.getpid(), *(p.pid for p in procs))]
    jobdir.write_record(folder, executor="local", job_id=None, factory=job.name,
                        folder=str(folder), pids=stamps, history=history)
    status = None
    # Ctrl-C is a stop signal: the tasks (in sessions of their own, so the terminal's SIGINT
    # reaches only this process) checkpoint and exit 75. A handler, not KeyboardInterrupt: a
    # second Ctrl-C then only repeats the request, and cannot land half-way through the first's
    # handling and leave the tasks running without ft.
    interrupted = []
    previous = _on_sigint(lambda *_: interrupted.append(True))
    try:
        with open(log, "rb") as handle:
            handle.seek(shown)
            while not interrupted:
                chunk = handle.read()
                if chunk:
                    echo(chunk.decode(errors="replace"))
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes) or all(c is not None for c in codes):
                    # One failed task takes the others down, as srun --kill-on-bad-exit does.
                    for p in procs:
                        if p.poll() is None:
                            p.terminate()
                    codes = [p.wait() for p in procs]
                    echo(handle.read().decode(errors="replace"))
                    status = _job_status(codes)
                    break
                time.sleep(0.2)
            if interrupted and status is None:
                event(folder, "signal", signal="SIGINT")
                echo(f"\nft: Ctrl-C: the job checkpoints and stops; `ft resubmit {folder}` continues it\n")
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGINT)
                codes = [p.wait() for p in procs]
                echo(handle.read().decode(errors="replace"))
                status = _job_status(codes)
    finally:
        _on_sigint(previous)
    event(folder, "exit", code=status)
    return status


def _on_sigint(handler):
    """Install `handler` for SIGINT; the one it replaces. Only the main thread can (a run
    started from another thread keeps Python's own, KeyboardInterrupt)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def _job_status(codes: list[int]) -> int:
    """The first task's failure (killed by a signal: shell style, 128 + N), else 0."""
    status = next((c for c in codes if c != 0), 0)
    return 128 - status if status < 0 else status


def cancel(record: dict, label: str, run_dir: Path) -> list[int]:
    """SIGTERM to the job's task groups (the trainer checkpoints and stops; `run_dir` records the
    cancel first, so the job reads CANCELLED); the pids signalled. Only a process that matches
    its stamp is signalled: a number reused since, or a process on another host, never is."""
    host = jobdir.other_host(record)
    if host:
        raise UserError(f"job {label} runs on {host}, not here: its processes cannot be seen from this machine",
                        hint=f"run `ft cancel {label}` on {host}")
    event(run_dir, "cancel")
    stamps = jobdir.stamps(record)
    # pids[0] is the process that watches the tasks and records their exit: spare it.
    signalled = []
    for stamp in stamps[1:] or stamps:
        if not jobdir.is_running(stamp):
            continue
        pid = stamp["pid"]
        try:
            # The tasks lead their own process groups (start_new_session): the group takes a
            # container runtime's children too. Anything else gets the signal alone.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    return signalled


def _pythonpath() -> str:
    """The supervisor must import this same launcher, wherever it was imported from."""
    here = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))


if __name__ == "__main__":  # the detached supervisor
    from ftcore.schema import load_job

    target = Path(sys.argv[1])
    sys.exit(run(load_job(target / jobdir.CONFIG), target, echo=lambda text: None))
