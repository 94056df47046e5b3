"""Shared fixtures. Every test gets its own FT_HOME and config folder, never the user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The `slurm_cluster`, `stock_image` and `ssh_cluster` fixtures for every test module that asks for them.
pytest_plugins = ("slurm_cluster", "container_image", "ssh_cluster")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "ft-home"
    monkeypatch.setenv("FT_HOME", str(home))
    monkeypatch.setenv("FT_CONFIG_DIR", str(tmp_path / "ft-config"))
    monkeypatch.delenv("FT_FACTORY_PATH", raising=False)
    monkeypatch.delenv("FT_PROFILE", raising=False)
    # Tests never reach the real hub: a closed local port refuses at once (the hub stand-in's
    # tests point HF_ENDPOINT at it themselves).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return home


@pytest.fixture
def ft(tmp_path):
    """Run the real `ft` command line in a subprocess (same interpreter, repo on the path)."""

    def run(*args: str, input: str | None = None, env: dict | None = None, cwd: Path | None = None):
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        return subprocess.run(
            [sys.executable, "-m", "launcher", *args],
            capture_output=True, text=True, input=input, env=full_env, cwd=cwd or tmp_path, timeout=600,
        )

    return run
