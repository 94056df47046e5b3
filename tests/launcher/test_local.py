"""`ft submit --executor local`: the same job and job folder, run here without SLURM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import folder_of

pytestmark = pytest.mark.train


def test_local_run_streams_the_log_and_returns_the_status(ft):
    result = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", "trainer.max_steps=4",
                "trainer.val_every_steps=2")
    assert result.returncode == 0, result.stderr
    assert "step 4/4 (100%) | epoch 0 | loss" in result.stdout and "done: 4 steps in" in result.stdout
    folder = folder_of(result.stderr)
    assert (folder / "job.sbatch").is_file()  # the script the same job would use on a cluster
    events = [json.loads(l)["event"] for l in (folder / "events.jsonl").read_text().splitlines()]
    assert events == ["start", "exit"]
    assert "COMPLETED" in ft("status", str(folder)).stdout
    assert "step 4" in ft("logs", str(folder)).stdout


def test_local_failure_is_the_exit_status(ft, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "c", "question": "q", "answers": {"text": []}}\n')  # fits squad, no answer
    result = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", f"data.path={bad}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bad.jsonl line 1" in result.stdout + result.stderr
    assert "FAILED (exit 2)" in ft("status", str(folder_of(result.stderr))).stdout


def test_local_two_processes_and_detach(ft):
    result = ft("submit", "--factory", "tiny", "--executor", "local", "--yes", "--detach",
                "trainer.devices=2", "trainer.max_steps=3")
    assert result.returncode == 0, result.stderr
    folder = folder_of(result.stderr)
    deadline = time.time() + 180
    while time.time() < deadline and "COMPLETED" not in (status := ft("status", str(folder)).stdout):
        time.sleep(1)
    assert "COMPLETED" in status, status + "".join(p.read_text() for p in (folder / "logs").glob("*"))
    assert {"rank-0.out", "rank-1.out"} <= {p.name for p in (folder / "logs").iterdir()}


def test_installed_ft_carries_its_templates_and_factories(tmp_path):
    """`pip install .` (not editable): the console script works outside the checkout."""
    ft = shutil.which("ft", path=str(Path(sys.executable).parent))
    if ft is None:
        if os.environ.get("CI"):
            pytest.fail("ft is not installed in the test environment (.ci/run installs it)")
        pytest.skip("ft is not installed in this environment (.ci/run installs it with pip install .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FT_HOME"] = str(tmp_path / "home")
    listed = subprocess.run([ft, "factories"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "llama31_8b" in listed.stdout, listed.stderr
    dry = subprocess.run([ft, "submit", "--factory", "tiny", "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stdout.startswith("#!/bin/bash"), dry.stderr
    where = subprocess.run([sys.executable, "-c", "import launcher.paths as p; print(p.templates_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    assert "_bundled" in where
