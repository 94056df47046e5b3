"""Run one training process of an ft job.

    python -m trainer --config JOB_DIR/config.yaml

Outputs go to the config's folder (for a sweep, each array task's own tasks/<i>/). Exit status: 0 done, 2 a problem with the
config or data (message on stderr, no traceback), 75 stopped by SIGUSR1/SIGTERM after writing
a checkpoint (requeue to resume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import EXIT_CONFIG, ConfigError


def load_job(path: str | Path):
    """Read and validate config.yaml with the launcher's schema (no torch needed)."""
    import yaml
    from pydantic import ValidationError

    from launcher.schema import Job

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        return Job.model_validate(raw)
    except ValidationError as e:
        problems = [f"  {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path} is not a valid ft job:\n" + "\n".join(problems)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the job's resolved config.yaml")
    args = parser.parse_args(argv)
    try:
        job = load_job(args.config)
        job_dir = Path(args.config).resolve().parent
        from .train import run  # torch is imported only once the config is known to be good

        return run(job, job_dir)
    except ConfigError as e:
        print(f"ft trainer: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
