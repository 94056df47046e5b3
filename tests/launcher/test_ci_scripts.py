"""The CI and cluster scripts: lint-clean, test.sh fails on 'no tests', slurm-up is idempotent.
(The quickstart runs end to end in test_local_lifecycle.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_cluster import NODES, node_states

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / ".ci" / "run", *sorted((ROOT / "scripts").glob("*.sh")), *sorted((ROOT / "bench").glob("*.sh"))]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_run_is_strict_bash():
    text = (ROOT / ".ci" / "run").read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "torch==2.13.0" in text
    # torch (CPU, pinned) must be installed before anything that depends on it
    assert text.index("torch==2.13.0") < text.index('.[train,dev,plot,hub,eval]')
    # the test command is the README's
    assert "\nbash scripts/test.sh\n" in text
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text()


def test_test_sh_fails_when_no_test_is_collected():
    env = dict(os.environ, FT_PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "test.sh"), "tests/launcher/test_ci_scripts.py", "-k", "no_such_test_name_xyz",
         "-p", "no:cacheprovider"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "collected no tests" in proc.stderr


@pytest.mark.slurm
def test_slurm_up_is_idempotent(slurm_cluster):
    if os.geteuid() != 0:
        pytest.skip("scripts/slurm-up.sh needs root")
    for _ in range(2):
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-up.sh")], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "cluster ftci up" in proc.stdout
    states = node_states()
    assert all(states.get(n) in {"idle", "mix", "alloc", "comp"} for n in NODES), states


@pytest.mark.parametrize("ci, outcome", [("true", "Failed"), ("", "Skipped")])
def test_unavailable_cluster_fails_on_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    import slurm_cluster as sc

    monkeypatch.setattr(sc, "cluster_is_up", lambda: False)
    monkeypatch.setattr(sc.os, "geteuid", lambda: 1000)  # not root: cannot start it
    monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as excinfo:
        sc.ensure_cluster()
    assert type(excinfo.value).__name__ == outcome
    assert "SLURM cluster unavailable" in str(excinfo.value)
