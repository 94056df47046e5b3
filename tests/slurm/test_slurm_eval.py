"""`ft eval JOB --tasks` where JOB ran on SLURM: an evaluation job on the real local cluster,
submitted through the same scheduler seam, followed like any job (`ft jobs/status/logs`), its
results in the training job's folder (`eval/<time>-lm-eval.json`, lm-eval's JSON), shown by
`ft status JOB` and `ft eval JOB --show`. One tiny job is trained on the cluster for the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from container_image import site_for
from lm_eval_tasks import write_tasks
from slurm_cluster import wait_for_job

from ftcore import contract

pytest.importorskip("lm_eval")
pytestmark = [pytest.mark.slurm, pytest.mark.train]
REPO = Path(__file__).resolve().parents[2]

SHORT = ["trainer.max_steps=2", "trainer.val_every_steps=2", "slurm.time=00:05:00", "slurm.partition=debug",
         "peft=lora"]


@pytest.fixture(scope="module")
def trained(slurm_cluster, tmp_path_factory):
    """(job id, its folder, the environment whose FT_HOME holds it): one training job for the module."""
    home = tmp_path_factory.mktemp("ft-home")
    env = dict(os.environ, FT_HOME=str(home), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "launcher", "submit", "--factory", "tiny", *SHORT, "--yes"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split("Submitted batch job ")[1].split()[0]
    folder = Path(result.stdout.split("Job folder: ")[1].split()[0])
    state, _ = wait_for_job(job_id, timeout=300)
    assert state == "COMPLETED", "\n".join(p.read_text() for p in (folder / "logs").glob("*"))
    return job_id, folder, {"FT_HOME": str(home)}


def test_an_evaluation_job_runs_on_the_cluster_and_its_scores_land_in_the_job(trained, ft, tmp_path):
    job_id, folder, env = trained
    mc, gen = write_tasks(tmp_path / "tasks")
    result = ft("eval", job_id, "--tasks", f"{mc},{gen}", "--limit", "2", "--yes", env=env)  # SLURM: the job's default
    assert result.returncode == 0, result.stderr
    eval_id = result.stdout.split("Submitted batch job ")[1].split()[0]
    eval_folder = Path(result.stdout.split("Job folder: ")[1].split()[0])
    assert eval_id != job_id and eval_folder.parent == folder.parent
    script = (eval_folder / "job.sbatch").read_text()
    assert "-m fttools.lmeval" in script and "--ntasks-per-node=1" in script and "--job-name=ft-eval-tiny" in script
    assert "export HF_DATASETS_OFFLINE=1" in script

    listed = {row["id"]: row for row in json.loads(ft("jobs", "--json", env=env).stdout)}
    assert eval_id in listed and job_id in listed
    state, _ = wait_for_job(eval_id, timeout=300)
    logs = ft("logs", eval_id, env=env)
    assert state == "COMPLETED", logs.stdout[-3000:] + logs.stderr[-2000:]
    assert "results: " in logs.stdout and "ft_tiny_mc" in logs.stdout

    (results,) = (folder / "eval").glob("*-lm-eval.json")
    data = json.loads(results.read_text())
    assert set(data["results"]) == {"ft_tiny_mc", "ft_tiny_gen"} and data["config"]["limit"] == 2
    assert data["config"]["model_args"]["peft"].startswith(str(folder / "checkpoints"))

    status = ft("status", job_id, env=env)
    assert status.returncode == 0 and "lm-eval    ft_tiny_gen exact_match" in status.stdout
    evaluation = ft("status", eval_id, env=env)
    assert "COMPLETED" in evaluation.stdout and f"results    {results}" in evaluation.stdout
    shown = ft("eval", job_id, "--show", env=env)
    assert shown.returncode == 0 and "acc_norm" in shown.stdout and results.name in shown.stdout

    again = ft("resubmit", eval_id, "--yes", env=env)
    assert again.returncode == 2 and "not a training job" in again.stderr


def test_an_evaluation_job_whose_python_lacks_lm_eval_is_refused_at_submit(trained, ft, tmp_path):
    """The job's Python is asked what it has (as `ft image check` asks an image): without
    lm-eval nothing is submitted, and the error names the extra."""
    job_id, folder, env = trained
    (tmp_path / "mine.yaml").write_text("task: mine\n")
    python = tmp_path / "python"  # a Python that has the contract's packages' metadata but no lm-eval
    python.write_text("#!/bin/sh\nexec env PYTHONNOUSERSITE=1 python3 -S \"$@\"\n")
    python.chmod(0o755)
    before = {p.name for p in folder.parent.iterdir()}
    config = (folder / "config.yaml").read_text()
    assert "  python: null" in config
    (folder / "config.yaml").write_text(config.replace("  python: null", f"  python: {python}"))
    try:
        result = ft("eval", job_id, "--tasks", str(tmp_path / "mine.yaml"), "--yes", env=env)
    finally:
        (folder / "config.yaml").write_text(config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot run lm-eval" in result.stderr and contract.install_line("eval") in result.stderr
    assert {p.name for p in folder.parent.iterdir()} == before  # no evaluation job folder


def test_merge_and_generate_run_as_short_jobs_on_a_node(trained, ft):
    """The heavy model commands off the login node: the same machinery, `python -m fttools.job`."""
    job_id, folder, env = trained
    merged = ft("merge", job_id, "--executor", "slurm", "--yes", env=env)
    assert merged.returncode == 0, merged.stderr
    merge_id = merged.stdout.split("Submitted batch job ")[1].split()[0]
    said = ft("generate", job_id, "--question", "How old is Ada?", "--context", "Ada is 36.", "--max-new-tokens", "4",
              "--executor", "slurm", "--yes", env=env)
    assert said.returncode == 0, said.stderr
    say_id = said.stdout.split("Submitted batch job ")[1].split()[0]
    for job in (merge_id, say_id):
        state, _ = wait_for_job(job, timeout=300)
        logs = ft("logs", job, env=env)
        assert state == "COMPLETED", logs.stdout[-3000:]
    latest = (folder / "checkpoints" / "latest").read_text().strip()
    out = folder / "exports" / f"{latest}-merged"
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert str(out) in ft("logs", merge_id, env=env).stdout
    status = ft("status", merge_id, env=env).stdout
    assert "runs       ft merge " in status and "COMPLETED" in status
    assert "runs       ft generate " in ft("status", say_id, env=env).stdout
    assert ft("logs", say_id, env=env).stdout.strip()  # the answer, in the job's log


def test_the_evaluation_job_runs_in_the_jobs_image(slurm_cluster, ft, eval_image):
    """A container job (the stock image plus lm-eval, through the Apptainer stand-in), its model,
    data, FT_HOME and the task files all outside the default binds: the evaluation job runs
    `python -m fttools.lmeval` in the job's image, with the run and the task folder bound."""
    with site_for(eval_image) as site:
        env = site.env
        result = ft("submit", "--factory", "tiny", *SHORT, *site.overrides(), "--yes", env=env)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.split("Submitted batch job ")[1].split()[0]
        folder = Path(result.stdout.split("Job folder: ")[1].split()[0])
        assert wait_for_job(job_id, timeout=300)[0] == "COMPLETED"
        mc, gen = write_tasks(site.root / "tasks")
        result = ft("eval", job_id, "--tasks", f"{mc},{gen}", "--limit", "2", "--yes", env=env)
        assert result.returncode == 0, result.stderr
        eval_id = result.stdout.split("Submitted batch job ")[1].split()[0]
        state, _ = wait_for_job(eval_id, timeout=400)
        logs = ft("logs", eval_id, env=env)
        assert state == "COMPLETED", logs.stdout[-3000:]
        (results,) = (folder / "eval").glob("*-lm-eval.json")
        assert set(json.loads(results.read_text())["results"]) == {"ft_tiny_mc", "ft_tiny_gen"}
        (call,) = [c for c in site.calls() if "fttools.lmeval" in c["command"]]
        assert call["command"][:3] == ["python", "-m", "fttools.lmeval"] and call["image"] == str(site.image)
        bound = {m["dst"] for m in call["mounts"]}
        assert {str(folder), str(site.root / "tasks"), "/opt/ft/fttools"} <= bound, bound
