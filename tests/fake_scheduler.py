"""A fake sbatch (and a scontrol that has forgotten every job) on PATH: for unit tests of the
scheduler seam (launcher/slurm.py) only; the real cluster tests use real SLURM."""

from __future__ import annotations

import os
from pathlib import Path


def fake_scheduler(tmp_path: Path, monkeypatch, sbatch_body: str) -> Path:
    """sbatch (with `sbatch_body`), and a scontrol that has forgotten every job."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text("#!/bin/bash\n" + sbatch_body)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir
