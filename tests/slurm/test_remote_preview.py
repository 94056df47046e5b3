"""`ft submit --cluster NAME --dry-run` previews the script the cluster will run: rendered by the
cluster's ft, with its FT_HOME, hub cache and Python, and nothing of the laptop's paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssh_cluster import SshCluster

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm]


def test_a_cluster_dry_run_shows_the_clusters_paths(slurm_cluster, ft, ssh_cluster: SshCluster, tmp_path,
                                                      isolated_home):
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    shutil.copy(REPO / "factories" / "data" / "tiny_qa.jsonl", laptop / "qa.jsonl")
    result = ft("submit", "--cluster", ssh_cluster.name, "--dry-run", "--factory", "tiny", "data.path=./qa.jsonl", "hub.offline=true",
                cwd=laptop)
    assert result.returncode == 0, result.stdout + result.stderr
    script = result.stdout
    assert script.startswith("#!/bin/bash")
    home = str(ssh_cluster.ft_home)
    assert f"#SBATCH --output={home}/jobs/" in script
    assert f"export HF_HUB_CACHE={home}/hub" in script
    assert str(isolated_home) not in script and str(laptop) not in script  # nothing of the laptop's
    assert "data.path: ./qa.jsonl → sent with the job" in result.stderr
    assert f"Job folder: {home}/jobs/" in result.stderr  # the dry-run folder is the cluster's
    config = next(line for line in script.splitlines() if line.startswith("export FT_JOB_DIR="))
    folder = config.split("=", 1)[1]
    listed = ssh_cluster.ssh("cat", f"{folder}/config.yaml")
    assert listed.returncode == 0 and f"{home}/uploads/" in listed.stdout  # the data file it reads there
