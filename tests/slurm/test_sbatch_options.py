"""Every #SBATCH option ft renders is one the real sbatch accepts (`sbatch --test-only`, which
parses the script and asks the controller without queueing anything)."""

from __future__ import annotations

import subprocess

import pytest

from cli_helpers import folder_of
from slurm_cluster import PARTITION

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]


def sbatch_test_only(script) -> subprocess.CompletedProcess:
    return subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60)


def rendered(ft, *words: str):
    result = ft("submit", "--dry-run", "--factory", "tiny", *words)
    assert result.returncode == 0, result.stderr
    folder = folder_of(result.stderr)
    script = folder / "job.sbatch"
    return script, [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def test_every_option_ft_renders_passes_sbatch_test_only(slurm_cluster, ft):
    # A real ft job, held (a flag given as true): the one the rendered job waits for.
    first = ft("submit", "--factory", "tiny", "--yes", "slurm.extra.hold=true")
    assert first.returncode == 0, first.stderr
    hold = next(line.split()[-1] for line in first.stdout.splitlines() if line.startswith("Submitted batch job"))
    assert "#SBATCH --hold" in (folder_of(first.stdout) / "job.sbatch").read_text()
    try:
        script, lines = rendered(
            ft, f"slurm.partition={PARTITION}", "slurm.mem=1G", "slurm.cpus_per_task=1", "slurm.time=00:05:00",
            "slurm.account=acct", "slurm.qos=normal", "slurm.job_name=a name", "slurm.signal_seconds=60",
            "slurm.extra.exclusive=true", "slurm.extra.overcommit=false", "slurm.extra.mail-type=END",
            "slurm.extra.nice=10", "slurm.extra.comment=two words; and $(quotes)", "slurm.extra.hold=null",
            "--after", str(hold))
        for expected in ("--exclusive", "--mail-type=END", "--nice=10", "--hold", "--requeue", "--open-mode=append",
                         f"--dependency=afterok:{hold}", "--signal=B:USR1@60", "--cpus-per-task=1", "--mem=1G"):
            assert f"#SBATCH {expected}" in lines, lines
        assert not any("overcommit" in line or "=true" in line for line in lines), lines
        checked = sbatch_test_only(script)
        assert checked.returncode == 0, checked.stderr
        assert "to start at" in checked.stderr
    finally:
        subprocess.run(["scancel", str(hold)], timeout=30)


def test_a_sweeps_array_script_passes_sbatch_test_only(slurm_cluster, ft):
    script, lines = rendered(ft, "--sweep", "optim.lr=1e-3,3e-3")
    assert "#SBATCH --array=0-1" in lines
    checked = sbatch_test_only(script)
    assert checked.returncode == 0, checked.stderr


def test_gpu_and_constraint_options_parse_and_meet_only_this_clusters_lack_of_them(slurm_cluster, ft):
    """This cluster has no GPUs and no node features: sbatch parses both options and refuses
    the resource, never the syntax (a malformed option is refused as `Invalid --x specification`)."""
    script, lines = rendered(ft, "trainer.accelerator=gpu", "trainer.gpu_type=h100", "trainer.devices=2",
                             "data.global_batch_size=16", "slurm.constraint=h100", "container.runtime=none",
                             "model.dtype=fp32")
    assert "#SBATCH --gpus-per-node=h100:2" in lines and "#SBATCH --constraint=h100" in lines
    checked = sbatch_test_only(script)
    assert checked.returncode != 0
    assert "Invalid generic resource" in checked.stderr or "Invalid feature" in checked.stderr, checked.stderr
    assert "Invalid --" not in checked.stderr
