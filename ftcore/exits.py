"""Exit statuses, and the stop protocol, shared by the CLI, the trainer and the sbatch script."""

from __future__ import annotations

import os
from typing import Mapping

OK = 0
# A problem with what the user asked for (config, data, paths): message, no traceback.
USER_ERROR = 2
# "Stopped early on purpose, checkpoint written: requeue me." BSD's EX_TEMPFAIL.
REQUEUE = 75

# The cluster's KillWait: the seconds SLURM leaves a job between SIGTERM (a cancel, a time limit,
# a preemption after its GraceTime) and SIGKILL. `ft submit` reads it from `scontrol show config`
# and the script exports it, so the trainer can say when a checkpoint takes longer than that.
KILL_WAIT_VAR = "FT_KILL_WAIT_S"


def kill_wait_s(environ: Mapping[str, str] = os.environ) -> int | None:
    """The KillWait the script passed down, or None (not under ft's script, or not read)."""
    text = environ.get(KILL_WAIT_VAR, "")
    # ASCII digits only ("²" and "١٢" are digits to str.isdigit), six at most (11 days).
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None
