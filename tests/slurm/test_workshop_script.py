"""`ft train` from a workshop's own batch script, submitted with plain sbatch (not `ft submit`) on
the real local SLURM cluster: the srun line comes from `ft submit --dry-run --print-srun`, with the
allocation's sizes written as workshops write them ("${SLURM_NNODES}"). One node preempted by
`scontrol requeue` and resumed exactly; two nodes; and through the container stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import job_fields, sbatch, wait_for_job, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.train]

# The allocation's own sizes, as the workshop's `trainer.devices="${SLURM_GPUS_PER_NODE}"` (a CPU cluster
# has no GPUs per node: one task per node stands for one GPU).
FROM_SLURM = ' \\\n    trainer.num_nodes="${SLURM_NNODES}" trainer.devices="${SLURM_NTASKS_PER_NODE}"'


def srun_line(ft, *overrides: str, env: dict | None = None) -> str:
    result = ft("submit", "--factory", "tiny", "--dry-run", "--print-srun", *overrides, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def workshop_script(folder: Path, nodes: int, line: str) -> Path:
    """The shape of the workshop's script: #SBATCH lines, a variable or two, the one srun line."""
    script = folder / "finetune.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=workshop-ft
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:10:00
#SBATCH --output={folder}/slurm-%j.out

echo "fine-tuning on $SLURM_JOB_NODELIST"
{line}{FROM_SLURM}
""")
    return script


def submit(script: Path, env: dict | None = None) -> str:
    env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO))
    return str(sbatch([str(script)], cwd=script.parent, env=env))


def folder_of(ft, job_id: str, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = [r for r in json.loads(ft("jobs", "--json").stdout) if r["id"] == job_id]
        if rows:
            return Path(rows[0]["folder"])
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} never wrote its folder")


def events(folder: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    except OSError:
        return []


def losses(folder: Path) -> dict[int, float]:
    try:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    except OSError:
        return {}
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def assert_completed(ft, job_id: str, folder: Path, steps: int, script_dir: Path) -> str:
    """The job ended well, and `ft jobs` says so; returns the trainer's logs from the job folder."""
    state, _ = wait_for_job(job_id, timeout=300)
    output = "\n".join(p.read_text() for p in script_dir.glob("slurm-*.out"))
    logs = "\n".join(p.read_text() for p in sorted((folder / "logs").glob("*.out")))
    assert state == "COMPLETED", output + logs
    (row,) = [r for r in json.loads(ft("jobs", "--json").stdout) if r["id"] == job_id]
    assert (row["state"], row["executor"], row["progress"]) == ("COMPLETED", "srun", f"{steps}/{steps}")
    last = events(folder)[-1]
    assert (last["event"], last["code"]) == ("exit", 0)
    return logs


LORA = ["peft=lora", "trainer.max_steps=100", "trainer.val_every_steps=null", "checkpoint.every_steps=1000",
        "data.max_seq_length=64", "optim.lr=1e-2"]


def test_one_node_preempted_by_requeue_resumes_exactly(slurm_cluster, ft, tmp_path, isolated_home):
    script = workshop_script(tmp_path, 1, srun_line(ft, *LORA))
    job_id = submit(script)
    # The same job alone, with no scheduler, for comparison (it runs while the cluster job waits).
    reference = subprocess.Popen(
        [sys.executable, "-m", "launcher", "train", "--factory", "tiny", "--job-dir", str(tmp_path / "reference"),
         *LORA, "trainer.num_nodes=1", "trainer.devices=1"],
        env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = folder_of(ft, job_id)
    assert folder.name == f"slurm-{job_id}.0-tiny"
    wait_until(lambda: max(losses(folder), default=0) >= 10, 240, "the job never reached step 10")

    subprocess.run(["scontrol", "requeue", job_id], check=True)  # what a site's preemption does
    wait_until(lambda: [e["event"] for e in events(folder)][-1:] == ["exit"], 60,
               f"the trainer did not stop: {events(folder)}")
    stopped = events(folder)
    assert [e["event"] for e in stopped] == ["start", "signal", "exit"] and stopped[-1]["code"] == 75
    # A requeued job waits ~120 s (BeginTime); release it once the old run's credential is revoked.
    wait_until(lambda: job_fields(job_id).get("JobState") == "PENDING", 60, "requeued job is not pending")
    time.sleep(15)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)

    logs = assert_completed(ft, job_id, folder, 100, tmp_path)
    assert [e["event"] for e in events(folder)] == ["start", "signal", "exit", "start", "exit"]
    assert [e["restart"] for e in events(folder) if e["event"] == "start"] == [0, 1]
    stop_step = int(logs.split("checkpointing step ")[1].split(",")[0])
    assert f"resumed from {folder / 'checkpoints' / f'step-{stop_step:06d}'} at step {stop_step}" in logs
    assert f"scontrol requeue {job_id}" in logs  # the exit-75 message says how to resume

    # Resumed exactly: every step's loss and the final adapter, bit for bit, as without the requeue.
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out
    assert losses(folder) == losses(tmp_path / "reference") and len(losses(folder)) == 100
    from safetensors.torch import load_file

    def adapter(run: Path) -> dict:
        return load_file(run / "checkpoints" / "step-000100" / "adapter_model.safetensors")

    expected, got = adapter(tmp_path / "reference"), adapter(folder)
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder / "base_model")
    model = PeftModel.from_pretrained(base, folder / "checkpoints" / "step-000100")
    assert model.peft_config["default"].r == 8

    status = ft("status", job_id)
    assert "COMPLETED" in status.stdout and "2 start(s)" in status.stdout
    assert "resumed from" in ft("logs", job_id, "--rank", "0").stdout
    again = ft("resubmit", job_id)
    assert again.returncode == 2 and f"scontrol requeue {job_id}" in again.stderr and "--job-dir" in again.stderr


def test_two_nodes_train_as_one_job(slurm_cluster, ft, tmp_path, isolated_home):
    script = workshop_script(tmp_path, 2, srun_line(ft, "trainer.max_steps=4", "trainer.val_every_steps=2",
                                                    "data.max_seq_length=64"))
    job_id = submit(script)
    folder = folder_of(ft, job_id)
    logs = assert_completed(ft, job_id, folder, 4, tmp_path)
    assert "2 process(es) (slurm)" in logs
    assert sorted(p.name for p in (folder / "logs").iterdir()) == ["rank-0.out", "rank-1.out"]
    output = next(tmp_path.glob("slurm-*.out")).read_text()
    assert output.count("Job folder: ") == 1 and [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert (folder / "checkpoints" / "step-000004" / "model.safetensors").is_file()


def test_through_the_container_standin(slurm_cluster, ft, tmp_path, container_site):
    """The workshop's line in the stock image through the isolating stand-in: ft's launcher,
    trainer and factories bound in, FT_HOME, model and data under /srv, outside every default
    bind, and the script submitted from another folder."""
    site = container_site
    line = srun_line(ft, "peft=lora", "trainer.max_steps=4", "data.max_seq_length=64",
                     *site.overrides("singularity"), env=site.env)
    assert line.startswith("srun singularity exec --nv \\\n")
    job_id = submit(workshop_script(tmp_path, 1, line), {**os.environ, **site.env})
    folder = folder_of(ft, job_id)
    assert folder.parent == site.home / "jobs"
    assert_completed(ft, job_id, folder, 4, tmp_path)
    (call,) = site.calls()
    assert call["command"][:6] == ["python", "-m", "launcher", "train", "--factory", "tiny"]
    assert Path(call["root"]) != Path("/") and not call["cwd"].startswith(str(site.root))
    assert {str(site.model), str(site.data), str(site.home / "jobs")} <= {m["dst"] for m in call["mounts"]}
    assert (folder / "checkpoints" / "step-000004" / "adapter_model.safetensors").is_file()


def test_through_the_pyxis_standin(slurm_cluster, ft, tmp_path, pyxis_site):
    """The workshop's line on a Pyxis cluster: srun's own --container-image, no wrapper; `ft train`
    and the trainer in the squashfs image through the Pyxis stand-in."""
    site = pyxis_site
    line = srun_line(ft, "peft=lora", "trainer.max_steps=3", "data.max_seq_length=64",
                     *site.overrides("pyxis", str(site.squashfs)), env=site.env)
    assert line.startswith(f"srun --container-image={site.squashfs} \\\n") and " exec " not in line
    job_id = submit(workshop_script(tmp_path, 1, line), {**os.environ, **site.env})
    folder = folder_of(ft, job_id)
    assert folder.parent == site.home / "jobs"
    assert_completed(ft, job_id, folder, 3, tmp_path)
    (call,) = site.calls()
    assert call["command"][:8] == ["env", "PYTHONPATH=/opt/ft", "python", "-m", "launcher", "train", "--factory", "tiny"]
    assert Path(call["root"]) != Path("/") and call["spec"]["name"] == f"ft-{job_id}"
    assert {str(site.model), str(site.data), str(site.home / "jobs")} <= {m["dst"] for m in call["mounts"]}
    assert (folder / "checkpoints" / "step-000003" / "adapter_model.safetensors").is_file()
