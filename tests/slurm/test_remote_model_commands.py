"""`--cluster NAME` on the model commands (eval, generate, export, merge, push): the laptop runs
them on the cluster's login node over the real loopback sshd (tests/ssh_cluster.py), on a job
trained there, and reads back only what they print; nothing of the cluster's job is copied here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_cluster import wait_for_job

pytestmark = [pytest.mark.slurm, pytest.mark.train]

SHORT = ["trainer.max_steps=2", "trainer.val_every_steps=2", "slurm.time=00:05:00", "slurm.partition=debug",
         "peft=lora"]


def test_model_commands_run_on_the_login_node(slurm_cluster, ft, ssh_cluster, tmp_path):
    submitted = ft("submit", "--cluster", "ftc", "--factory", "tiny", *SHORT, "--yes", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("Submitted batch job ")[1].split()[0]
    folder = Path(submitted.stdout.split("Job folder: ")[1].split()[0])
    assert wait_for_job(job_id, timeout=300)[0] == "COMPLETED"

    merged = ft("merge", job_id, "--cluster", "ftc", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    out = Path(merged.stdout.strip().splitlines()[-1])
    assert str(out).startswith(str(folder / "exports")) and (out / "config.json").is_file()  # there, not here
    said = ft("generate", "--cluster=ftc", job_id, "--question", "How old is Ada?", "--context", "Ada is 36.",
              "-n", "4", cwd=tmp_path)
    assert said.returncode == 0 and "prompt: " in said.stderr, said.stderr
    scored = ft("eval", job_id, "--loss-only", "--json", "--cluster", "ftc", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["checkpoint"].startswith(str(folder))
    exported = ft("export", job_id, "--to", "vllm", "--cluster", "ftc", cwd=tmp_path)
    assert exported.returncode == 0 and "vllm serve" in exported.stdout, exported.stderr
    listed = ft("push", job_id, "me/tiny", "--dry-run", "--cluster", "ftc", cwd=tmp_path)
    assert listed.returncode == 0 and "dry run, nothing uploaded" in listed.stdout, listed.stderr
    missing = ft("merge", "999999", "--cluster", "ftc", cwd=tmp_path)  # the cluster's ft answers, exit status and all
    assert missing.returncode == 2 and "no job '999999'" in missing.stderr
    assert not (tmp_path / "exports").exists()
