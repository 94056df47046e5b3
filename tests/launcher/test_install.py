"""The README's install line, as a user on a fresh login node meets it: a wheel built from
the checkout, installed into a new virtual environment that has no torch. `ft` starts, dry
runs, and refuses a job without a container that this Python could not run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*argv, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_installs_without_torch_and_refuses_what_that_python_cannot_run(tmp_path):
    # In the checkout: the wheel (what the README says to copy to the login node).
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", REPO, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("ft_launch-*-py3-none-any.whl"))
    # On the login node: a new venv, the one command.
    venv = tmp_path / "login"
    assert run(sys.executable, "-m", "venv", venv, cwd=tmp_path).returncode == 0
    python, ft = venv / "bin" / "python", venv / "bin" / "ft"
    installed = run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert run(python, "-c", "import torch", cwd=tmp_path).returncode != 0  # light: no torch came with it

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "FT_HOME": str(tmp_path / "ft-home"),
           "FT_CONFIG_DIR": str(tmp_path / "ft-config")}
    version = run(ft, "--version", cwd=tmp_path, env=env)
    assert version.returncode == 0 and version.stdout.startswith("ft 0."), version.stderr
    dry = run(ft, "submit", "--factory", "tiny", "--dry-run", cwd=tmp_path, env=env)
    assert dry.returncode == 0 and dry.stdout.startswith("#!/bin/bash"), dry.stderr
    assert "warning: torch is missing" in dry.stderr  # the dry run says what the real one refuses
    real = run(ft, "submit", "--factory", "tiny", "--executor", "local", "--yes", cwd=tmp_path, env=env)
    assert real.returncode == 2, real.stdout + real.stderr
    assert "error: torch is missing" in real.stderr and f"runs the job with {python}" in real.stderr
    assert "Traceback" not in real.stderr
    assert not (tmp_path / "ft-home" / "jobs").exists() or not [
        p for p in (tmp_path / "ft-home" / "jobs").iterdir() if (p / "submission.json").exists()]
