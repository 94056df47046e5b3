"""Real jobs on the real local SLURM cluster (scripts/slurm-up.sh): `ft submit` → sbatch →
srun → the trainer, on one node and on two, inside the stock image through the isolating
Apptainer/Singularity stand-in (and once on the host, runtime none); then the lifecycle
commands on what ran.

Container jobs keep FT_HOME, the model and the data under /srv/ft-test-* (no default bind
covers it) and are submitted from another folder: ft must bind each path the job needs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from slurm_cluster import job_fields, wait_for_job

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.train]

# Short runs: the point here is the path through the scheduler, not the training.
SHORT = ["trainer.max_steps=6", "trainer.val_every_steps=3", "checkpoint.every_steps=3",
         "slurm.time=00:05:00", "slurm.partition=debug"]


def submit(ft, *args: str, env: dict | None = None, site=None, runtime: str = "apptainer") -> tuple[str, Path]:
    """Submit the tiny factory; with a site, inside the stock image, from a folder that is not the site's."""
    if site is not None:
        args = (*site.overrides(runtime), *args)
        env = {**site.env, **(env or {})}
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
    assert "step 6/6 " in log


def assert_contained(site, folder: Path, tasks: int) -> None:
    """Each task ran inside the stock image (not the host's filesystem) and saw the site's
    paths, all outside the default binds, through ft's binds."""
    calls = [c for c in site.calls() if c["command"][-1].startswith(f"{folder}/")]
    assert len(calls) == tasks, site.log.read_text()
    for call in calls:
        root = Path(call["root"])
        assert root != Path("/") and (root / "usr" / "bin" / "python").exists() and not (root / "work").exists()
        assert not call["cwd"].startswith(str(site.root))  # submitted from another folder
        bound = {m["dst"] for m in call["mounts"]}
        assert {str(site.model), str(site.data), str(site.val), str(folder)} <= bound, bound
        assert call["command"][:3] == ["python", "-m", "trainer"]


def test_tiny_runs_on_one_node(slurm_cluster, ft, container_site):
    job_id, folder = submit(ft, site=container_site)
    assert str(folder).startswith(str(container_site.home))
    assert_trained(folder, job_id, tasks=1)
    assert_contained(container_site, folder, tasks=1)
    status = ft("status", job_id)
    assert status.returncode == 0 and "COMPLETED" in status.stdout
    logs = ft("logs", job_id, "--rank", "0")
    assert "step 6/6 " in logs.stdout and not logs.stdout.startswith("0: ")
    listed = json.loads(ft("jobs", "--json").stdout)
    assert listed[0]["id"] == job_id and listed[0]["folder"] == str(folder)
    cancel = ft("cancel", job_id)
    assert cancel.returncode == 2 and "already ended" in cancel.stderr


def test_tiny_sft_runs_fsdp2_on_two_nodes(slurm_cluster, ft, container_site):
    job_id, folder = submit(ft, "trainer.num_nodes=2", "data.micro_batch_size=2", site=container_site,
                            runtime="singularity")
    assert_trained(folder, job_id, tasks=2)
    assert_contained(container_site, folder, tasks=2)
    assert events(folder)[0]["nodes"] in ("n[1-2]", "n1,n2")
    from transformers import AutoModelForCausalLM

    latest = (folder / "checkpoints" / "latest").read_text().strip()
    model = AutoModelForCausalLM.from_pretrained(folder / "checkpoints" / latest)
    assert model.config.num_hidden_layers == 2


def test_tiny_lora_runs_data_parallel_on_two_nodes(slurm_cluster, ft, container_site):
    job_id, folder = submit(ft, "peft=lora", "trainer.num_nodes=2", "data.micro_batch_size=2", site=container_site)
    assert_trained(folder, job_id, tasks=2, weights="adapter_model.safetensors")
    assert_contained(container_site, folder, tasks=2)


def test_a_uri_image_is_pulled_once_and_checked_once(slurm_cluster, ft, container_site):
    """LoRA on one node from docker://: the login node pulls the SIF into the cache and checks
    it once; the job's task runs the cached SIF (no task pulls); a second job reuses both."""
    from container_image import STOCK_URI

    uri = ["container.image=" + STOCK_URI]
    job_id, folder = submit(ft, "peft=lora", *uri, site=container_site)
    assert_trained(folder, job_id, tasks=1, weights="adapter_model.safetensors")
    (pulled,) = container_site.calls("pull")
    sif = Path(pulled["out"]).parent / Path(pulled["out"]).name.split(".partial-")[0].lstrip(".")
    assert sif.parent == container_site.home / "images" and sif.is_file()
    script = (folder / "job.sbatch").read_text()
    assert str(sif) in script and STOCK_URI not in script
    runs = [c for c in container_site.calls() if c["image"] == str(sif)]
    assert len(runs) == 2  # the image check on the login node, then the job's one task
    again, folder2 = submit(ft, "peft=lora", *uri, site=container_site)
    assert_trained(folder2, again, tasks=1, weights="adapter_model.safetensors")
    assert len(container_site.calls("pull")) == 1
    assert len([c for c in container_site.calls() if c["image"] == str(sif)]) == 3  # no second check


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


def test_resubmit_continues_in_the_same_folder_and_follow_reads_the_log(slurm_cluster, ft):
    job_id, folder = submit(ft)
    follow = ft("logs", job_id, "-f")  # returns once the job has ended
    assert follow.returncode == 0 and "step 6/6 " in follow.stdout
    assert_trained(folder, job_id, tasks=1)
    again = ft("resubmit", job_id, "trainer.max_steps=9", "--yes")
    assert again.returncode == 0, again.stderr
    new_id = again.stdout.split("Submitted batch job ")[1].split()[0]
    state, _ = wait_for_job(new_id, timeout=240)
    log = "\n".join(p.read_text() for p in (folder / "logs").glob("*.out"))
    assert state == "COMPLETED", log
    assert "resumed from" in log and "step-000006" in log and "step 9/9 " in log
    record = json.loads((folder / "submission.json").read_text())
    assert record["job_id"] == new_id and record["history"][0]["job_id"] == job_id
    old = ft("status", job_id)  # the id a user remembers still finds the folder
    assert old.returncode == 0 and str(folder) in old.stdout and new_id in old.stdout
    assert old.stdout.startswith(f"job        {job_id} (slurm), an earlier submission of this folder")
    assert f"(resubmitted as {new_id})" in old.stdout.splitlines()[1]  # its own state, not the new job's


def test_sweep_runs_as_one_array_and_after_waits(slurm_cluster, ft, container_site):
    job_id, folder = submit(ft, "--sweep", "optim.lr=1e-3,3e-3", site=container_site)
    fields = wait_for_job(job_id, timeout=240)[1]
    exits = [folder / "tasks" / str(task) / "events.jsonl" for task in (0, 1)]
    deadline = time.time() + 240
    while time.time() < deadline and not all(p.is_file() and '"exit"' in p.read_text() for p in exits):
        time.sleep(1)
    for task in (0, 1):
        run = folder / "tasks" / str(task)
        lr = 1e-3 if task == 0 else 3e-3
        assert f"lr: {lr}" in (run / "config.yaml").read_text()
        assert (run / "checkpoints" / "latest").is_file(), list((folder / "logs").iterdir())
        assert [json.loads(l)["event"] for l in (run / "events.jsonl").read_text().splitlines()] == ["start", "exit"]
    assert "ArrayJobId" in fields
    assert_contained(container_site, folder, tasks=2)  # each array task reads its own tasks/<i>/config.yaml
    first, _ = submit(ft, "slurm.extra.hold=null")
    second, _ = submit(ft, "--after", first)
    assert job_fields(second)["Dependency"].startswith(f"afterok:{first}")
    busy = ft("resubmit", first)
    assert busy.returncode == 2 and "still PENDING" in busy.stderr and f"ft cancel {first}" in busy.stderr
    subprocess.run(["scancel", first, second], check=False)


def test_each_sweep_task_is_addressed_by_id_underscore_task(slurm_cluster, ft):
    """`ft status 15_1` / `ft logs 15_1`, as SLURM names array tasks; states per task, logs labelled."""
    job_id, folder = submit(ft, "--sweep", "optim.lr=1e-3,3e-3")
    exits = [folder / "tasks" / str(task) / "events.jsonl" for task in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not all(p.is_file() and '"exit"' in p.read_text() for p in exits):
        time.sleep(1)
    one = ft("status", f"{job_id}_1")
    assert one.returncode == 0, one.stderr
    assert f"job        {job_id}_1 (slurm)" in one.stdout and "state      COMPLETED" in one.stdout, one.stdout
    assert "progress   6 steps done in" in one.stdout and "checkpoint step-000006" in one.stdout
    whole = ft("status", job_id).stdout
    assert "task 0: COMPLETED" in whole and "task 1: COMPLETED" in whole and "DRY-RUN" not in whole, whole
    own = ft("logs", f"{job_id}_1").stdout
    assert "step 6/6 " in own and "lr 3.0e-04" in own and "lr 1.0e-04" not in own and "[task" not in own
    labelled = [line for line in ft("logs", job_id).stdout.splitlines() if line.strip()]
    assert {line.split("]")[0] for line in labelled} == {"[task 0", "[task 1"}, labelled[:5]


def test_a_pending_job_says_why_and_its_cancel_outlives_slurms_memory(slurm_cluster, ft, tmp_path):
    """A held job and one waiting on it: `ft status` and `ft logs -f` give SLURM's reason; `ft
    cancel` is recorded in the folder, which still says CANCELLED once SLURM no longer answers."""
    import sys

    held, held_folder = submit(ft, "slurm.extra.hold=null")
    waiting, waiting_folder = submit(ft, "--after", held)
    try:
        assert "state      PENDING (JobHeldUser" in ft("status", held).stdout
        assert "state      PENDING (Dependency" in ft("status", waiting).stdout
        follow = subprocess.Popen([sys.executable, "-m", "launcher", "logs", waiting, "-f"], cwd=tmp_path,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        first = follow.stderr.readline()
        assert f"ft: job {waiting} is PENDING (Dependency" in first
        for job in (waiting, held):
            cancelled = ft("cancel", job)
            assert cancelled.returncode == 0, cancelled.stderr
        assert follow.wait(timeout=120) == 0  # -f ends with the job
        assert "state      CANCELLED" in ft("status", waiting).stdout
    finally:
        subprocess.run(["scancel", held, waiting], check=False)
    for folder in (held_folder, waiting_folder):
        assert [e["event"] for e in events(folder)] == ["cancel"]
    # SLURM forgets a job MinJobAge after it ends; the folder's record answers then.
    bare = tmp_path / "no-slurm"
    bare.mkdir()
    status = ft("status", held, env={"PATH": f"{bare}"})
    assert "state      CANCELLED" in status.stdout, status.stdout + status.stderr


def test_tiny_full_dpo_runs_fsdp2_on_two_nodes(slurm_cluster, ft, container_site):
    """DPO with full weights on two nodes: the policy and its frozen reference copy sharded by FSDP2,
    inside the image; the first loss is ln 2 and TRL's figures reach metrics.jsonl."""
    pairs = container_site.root / "pairs.jsonl"
    pairs.write_text((REPO / "factories" / "data" / "tiny_prefs.jsonl").read_text())
    args = [*container_site.overrides("apptainer"), f"data.path={pairs}", f"data.val_path={pairs}",
            "peft=none", "trainer.num_nodes=2", "data.micro_batch_size=2", *SHORT,
            # one micro batch per rank and step, a short validation: the point is the path, not the training
            "data.global_batch_size=4", "data.max_seq_length=64", "trainer.limit_val_batches=2", "slurm.time=00:10:00"]
    result = ft("submit", "--factory", "tiny_dpo", *args, "--yes", env=container_site.env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    job_id = next(line for line in lines if line.startswith("Submitted batch job ")).split()[-1]
    folder = Path(next(line for line in lines if line.startswith("Job folder: ")).split(": ", 1)[1])
    assert_trained(folder, job_id, tasks=2)
    calls = [c for c in container_site.calls() if c["command"][-1].startswith(f"{folder}/")]
    assert len(calls) == 2, container_site.log.read_text()  # both tasks in the image, the pairs bound in
    assert all(str(pairs) in {m["dst"] for m in call["mounts"]} and call["command"][:3] == ["python", "-m", "trainer"]
               for call in calls)
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in steps if "loss" in r]
    assert abs(logged[0]["loss"] - 0.6931472) < 1e-5 and all("rewards/margins" in r for r in logged)
    assert any("val_rewards/accuracies" in r for r in steps)
    log = "\n".join(p.read_text() for p in (folder / "logs").glob("*.out"))
    assert "DPO reference: a frozen copy of the base in fp32, sharded like the policy" in log
