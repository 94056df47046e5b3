"""Run one training process of an ft job.

    python -m trainer --config JOB_DIR/config.yaml
    python -m trainer --config JOB_DIR/config.yaml --events --copy-output JOB_DIR/logs/rank-0.out

Outputs go to the config's folder (for a sweep, each array task's own tasks/<i>/). Exit status:
0 done, 2 a problem with the config or data (message on stderr, no traceback), 75 stopped by
SIGUSR1/SIGTERM/SIGINT (after writing a checkpoint once training has begun; at once during
start-up): requeue, or run it again, to resume.

`--events` and `--copy-output` are for `ft train`, which runs under a script ft did not
write: rank 0 then records start, signal and exit itself (ft's sbatch script does that for
`ft submit`), and each process keeps a copy of its output in the job folder.
"""

from __future__ import annotations

# First of all, before any import that takes time (pydantic, then torch): a stop signal in the
# process's first second (a preemption, a cancel as the job starts) ends it with the requeue status.
from trainer.stop import StopSignal  # standard library only

_EARLY_STOP = StopSignal()
if __name__ == "__main__":
    _EARLY_STOP.install()

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from ftcore import exits, records, rendezvous  # noqa: E402
from ftcore.errors import UserError  # noqa: E402
from ftcore.schema import load_job  # noqa: E402


def main(argv: list[str] | None = None, stop: StopSignal | None = None) -> int:
    """`stop`: the handler `python -m trainer` installed first thing (one is installed here otherwise)."""
    from trainer import quiet_import_noise

    quiet_import_noise()
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the job's resolved config.yaml")
    parser.add_argument("--events", action="store_true",
                        help="rank 0 records start, signal and exit in the job folder's events.jsonl")
    parser.add_argument("--copy-output", metavar="FILE", help="also append this process's output to FILE")
    args = parser.parse_args(argv)
    if args.copy_output:
        _copy_output(Path(args.copy_output))
    job_dir = Path(args.config).resolve().parent
    try:
        record = _events(job_dir) if args.events else None
    except UserError as e:  # the launcher's variables say nonsense (a hand-set SLURM_PROCID)
        print("ft trainer: " + "\n  ".join(e.problems), file=sys.stderr)
        return e.exit_code
    code = exits.USER_ERROR
    # Before the slow imports: a stop while the job is still starting ends it with the requeue status.
    if stop is None:
        stop = StopSignal()
        stop.install()
    if record:
        stop.report_to(on_signal=lambda name: record("signal", signal=name),
                       on_exit=lambda status: record("exit", code=status))
    try:
        job = load_job(args.config)
        if record:
            record("start", nodes=os.environ.get("SLURM_JOB_NODELIST") or os.uname().nodename)
        from .train import run  # torch is imported only once the config is known to be good

        code = run(job, job_dir, stop=stop)
        if record and code == exits.REQUEUE:
            _say_how_to_resume(job_dir)
        return code
    except UserError as e:
        print("ft trainer: " + "\n  ".join(e.problems), file=sys.stderr)
        if e.hint:
            print(f"ft trainer: hint: {e.hint}", file=sys.stderr)
        code = e.exit_code
        return code
    except BaseException:
        code = 1  # the traceback follows; SLURM sees the same status
        raise
    finally:
        if record:
            record("exit", code=code)
        stop.uninstall(exiting=True)  # (ignored while stopping: a late signal must not turn 75 into a death)


def _events(job_dir: Path):
    """A recorder of this run's events on rank 0 (a no-op on the others)."""
    if not rendezvous.detect(os.environ).is_main:
        return lambda name, **fields: None
    ids = {"job_id": rendezvous.job_id({"SLURM_JOB_ID": os.environ.get("SLURM_JOB_ID", "")}) or "",
           "restart": rendezvous.number(os.environ, "SLURM_RESTART_COUNT", 0)}
    return lambda name, **fields: records.record_event(job_dir, name, **ids, **fields)


def _say_how_to_resume(job_dir: Path) -> None:
    job_id = os.environ.get("SLURM_JOB_ID")
    if rendezvous.detect(os.environ).is_main:
        how = (f"requeue the job (the site's preemption does; by hand: scontrol requeue {job_id})" if job_id
               else "run the same command again")
        print(f"ft: checkpointed after a stop signal (exit {exits.REQUEUE}). {job_dir} resumes from it at the next "
              f"step when you {how}.", file=sys.stderr, flush=True)


class _Tee(io.TextIOBase):
    """A text stream that writes to the process's own stream and to a copy file."""

    def __init__(self, stream, copy) -> None:
        self._stream, self._copy = stream, copy

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._copy.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._copy.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:
        return self._stream.encoding


def _copy_output(path: Path) -> None:
    """Python-level output (logs, warnings, tracebacks) also goes to `path`, appended across runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout = _Tee(sys.stdout, copy)
    sys.stderr = _Tee(sys.stderr, copy)


if __name__ == "__main__":
    sys.exit(main(stop=_EARLY_STOP))
