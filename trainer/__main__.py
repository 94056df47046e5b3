"""Run one training process of an ft job.

    python -m trainer --config JOB_DIR/config.yaml

Outputs go to the config's folder (for a sweep, each array task's own tasks/<i>/). Exit status:
0 done, 2 a problem with the config or data (message on stderr, no traceback), 75 stopped by
SIGUSR1/SIGTERM after writing a checkpoint (requeue to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftcore import exits
from ftcore.errors import UserError
from ftcore.schema import load_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the job's resolved config.yaml")
    args = parser.parse_args(argv)
    try:
        job = load_job(args.config)
        job_dir = Path(args.config).resolve().parent
        from .train import run  # torch is imported only once the config is known to be good

        return run(job, job_dir)
    except UserError as e:
        print("ft trainer: " + "\n  ".join(e.problems), file=sys.stderr)
        if e.hint:
            print(f"ft trainer: hint: {e.hint}", file=sys.stderr)
        return exits.USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
