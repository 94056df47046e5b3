"""Real jobs on the real local SLURM cluster (scripts/slurm-up.sh): `ft submit` → sbatch →
srun → the trainer, on one node and on two, without a container and through the
Singularity stand-in; then the lifecycle commands on what ran."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from slurm_cluster import slurm_cluster, wait_for_job  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slurm, pytest.mark.train]

# Short runs: the point here is the path through the scheduler, not the training.
SHORT = ["trainer.max_steps=6", "trainer.val_every_steps=3", "checkpoint.every_steps=3",
         "slurm.time=00:05:00", "slurm.partition=debug"]


def submit(ft, *args: str, env: dict | None = None) -> tuple[str, Path]:
    result = ft("submit", "--factory", "tiny", *SHORT, *args, "--yes", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    job_line = next(line for line in lines if line.startswith("Submitted batch job "))
    folder = Path(next(line for line in lines if line.startswith("Job folder: ")).split(": ", 1)[1])
    return job_line.split()[-1], folder


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def assert_trained(folder: Path, job_id: str, tasks: int, weights: str = "model.safetensors") -> None:
    state, fields = wait_for_job(job_id, timeout=240)
    log = "\n".join(p.read_text() for p in (folder / "logs").glob("*.out"))
    assert state == "COMPLETED", f"{state}\n{log}"
    assert [e["event"] for e in events(folder)] == ["start", "exit"]
    assert events(folder)[-1]["code"] == 0
    assert int(fields["NumTasks"]) == tasks
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in steps) == 6
    latest = (folder / "checkpoints" / "latest").read_text().strip()
    assert (folder / "checkpoints" / latest / weights).is_file()
    assert "step 6 |" in log


def test_tiny_runs_on_one_node(slurm_cluster, ft):
    job_id, folder = submit(ft)
    assert_trained(folder, job_id, tasks=1)
    status = ft("status", job_id)
    assert status.returncode == 0 and "COMPLETED" in status.stdout
    logs = ft("logs", job_id, "--rank", "0")
    assert "step 6 |" in logs.stdout and not logs.stdout.startswith("0: ")
    listed = json.loads(ft("jobs", "--json").stdout)
    assert listed[0]["id"] == job_id and listed[0]["folder"] == str(folder)
    cancel = ft("cancel", job_id)
    assert cancel.returncode == 2 and "already ended" in cancel.stderr


def test_tiny_sft_runs_fsdp2_on_two_nodes(slurm_cluster, ft):
    job_id, folder = submit(ft, "trainer.num_nodes=2", "data.micro_batch_size=2")
    assert_trained(folder, job_id, tasks=2)
    assert events(folder)[0]["nodes"] in ("n[1-2]", "n1,n2")
    from transformers import AutoModelForCausalLM

    latest = (folder / "checkpoints" / "latest").read_text().strip()
    model = AutoModelForCausalLM.from_pretrained(folder / "checkpoints" / latest)
    assert model.config.num_hidden_layers == 2


def test_tiny_lora_runs_data_parallel_on_two_nodes(slurm_cluster, ft):
    job_id, folder = submit(ft, "peft=lora", "trainer.num_nodes=2", "data.micro_batch_size=2")
    assert_trained(folder, job_id, tasks=2, weights="adapter_model.safetensors")


def test_singularity_variant_runs_through_the_standin(slurm_cluster, ft, tmp_path):
    image = tmp_path / "ft.sif"
    image.write_bytes(b"stand-in image")
    log = tmp_path / "standin.jsonl"
    env = slurm_cluster.env_with_standin()
    env["FT_STANDIN_LOG"] = str(log)
    # The stand-in runs the command on the host, so "the image's Python" is this one, and
    # ft's packages come from PYTHONPATH rather than a bind into the image (mount_ft).
    job_id, folder = submit(ft, "peft=lora", "container.runtime=singularity", f"container.image={image}",
                            f"container.binds=[{tmp_path}:/data]", "container.nv=true",
                            "container.mount_ft=false", f"container.python={os.sys.executable}", env=env)
    assert_trained(folder, job_id, tasks=1, weights="adapter_model.safetensors")
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["image"] == str(image) and call["nv"] is True
    assert {"src": str(tmp_path), "dst": "/data", "opts": "rw"} in call["binds"]
    assert call["argv"][-5:] == [os.sys.executable, "-m", "trainer", "--config", str(folder / "config.yaml")]


def test_lifecycle_errors_are_clear(slurm_cluster, ft):
    for command in (["status", "999999"], ["logs", "999999"], ["cancel", "999999"]):
        result = ft(*command)
        assert result.returncode == 2 and "no job '999999'" in result.stderr
        assert "Traceback" not in result.stderr


def test_scheduler_refusal_loses_nothing(slurm_cluster, ft, isolated_home):
    result = ft("submit", "--factory", "tiny", "slurm.partition=nosuchpartition", "--yes")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sbatch refused the job" in result.stderr and "partition" in result.stderr.lower()
    jobs_root = isolated_home / "jobs"
    assert not jobs_root.exists() or not any(jobs_root.iterdir())


def test_fifty_concurrent_submissions_are_distinct(slurm_cluster, isolated_home):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = ["python", "-m", "launcher", "submit", "--factory", "tiny", "slurm.extra.hold=null", "--yes"]
    procs = [subprocess.Popen([os.sys.executable, *argv[1:]], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(50)]
    outputs = [p.communicate(timeout=300) for p in procs]
    ids = []
    try:
        for (out, err), proc in zip(outputs, procs):
            assert proc.returncode == 0, err
            ids.append(next(line.split()[-1] for line in out.splitlines() if line.startswith("Submitted batch job")))
        folders = [p for p in (isolated_home / "jobs").iterdir()]
        assert len(set(ids)) == 50 and len(folders) == 50
        for folder in folders:
            record = json.loads((folder / "submission.json").read_text())
            assert record["job_id"] in ids
            assert {"config.yaml", "job.sbatch", "command.txt"} <= {p.name for p in folder.iterdir()}
        assert sorted(json.loads((f / "submission.json").read_text())["job_id"] for f in folders) == sorted(ids)
    finally:
        if ids:
            subprocess.run(["scancel", *ids], check=False)
