"""`ft train`: resolution, the allocation check, the one job folder every task agrees on, and the
hand-over to the trainer — here without SLURM (alone, and under torchrun); tests/slurm/test_workshop_script.py
runs it from a workshop-shaped script on the real cluster."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from ftcore import contract, layout, records
from ftcore.errors import UserError
from launcher import jobdir, jobs, train

REPO = Path(__file__).resolve().parents[2]
SHORT = ["trainer.max_steps=3", "trainer.val_every_steps=null", "checkpoint.every_steps=2", "data.max_seq_length=64"]


def srun_env(procid: int = 0, ntasks: int = 1, nodes: int = 1, job_id: str = "4242", **more: str) -> dict:
    """The variables srun gives each task (SLURM 22.05, as printed on the test cluster)."""
    per_node = ntasks // nodes
    return {"SLURM_JOB_ID": job_id, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks),
            "SLURM_LOCALID": str(procid % per_node), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_NODELIST": "n[1-2]" if nodes > 1 else "n1",
            "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})", **more}


def problems(err: pytest.ExceptionInfo) -> str:
    return "\n".join(err.value.problems)


# --- resolution and the allocation ----------------------------------------------------------------


def test_every_task_names_the_same_folder_from_slurms_ids(isolated_home):
    plans = [train.prepare("tiny", ["trainer.num_nodes=2"], environ=srun_env(rank, 2, 2)) for rank in (0, 1)]
    assert plans[0].folder == plans[1].folder == isolated_home / "jobs" / "slurm-4242.0-tiny"
    assert [p.procs.rank for p in plans] == [0, 1] and plans[0].executor == "srun" and plans[0].job_id == "4242"
    array = train.prepare("tiny", [], environ=srun_env(job_id="4300", SLURM_ARRAY_JOB_ID="4290",
                                                       SLURM_ARRAY_TASK_ID="3"))
    assert array.folder.name == "slurm-4290_3.0-tiny" and array.job_id == "4290_3"
    assert train.prepare("tiny", [], environ={"SLURM_JOB_ID": "9", "SLURM_PROCID": "0"}).folder.name == "slurm-9.batch-tiny"


def test_torchrun_needs_a_shared_run_id_and_alone_gets_a_fresh_folder(isolated_home):
    torchrun = {"RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "abc"}
    assert train.prepare("tiny", [], environ=torchrun).folder.name == "torchrun-abc-tiny"
    with pytest.raises(UserError, match="--standalone"):
        train.prepare("tiny", [], environ={**torchrun, "TORCHELASTIC_RUN_ID": "none"})
    alone = [train.prepare("tiny", [], environ={}) for _ in range(2)]
    assert alone[0].folder != alone[1].folder and alone[0].executor == "local"
    assert train.prepare("tiny", [], "", str(isolated_home / "mine"), environ={}).folder == isolated_home / "mine"


def test_resolution_errors_are_ft_submits(isolated_home):
    with pytest.raises(UserError) as err:
        train.prepare("tiny", ["trainer.max_step=3", "optim.lr=-1"], environ={})
    assert "did you mean trainer.max_steps" in problems(err) and "optim.lr" in problems(err)
    with pytest.raises(UserError, match="unknown factory 'tinyy'"):
        train.prepare("tinyy", [], environ={})


def test_gpu_counts_as_slurm_writes_them(isolated_home):
    env = srun_env(0, 2)
    for value in ("2", "a100:2", "gpu:a100:2"):
        assert train.prepare("tiny", [f"trainer.devices={value}"], environ=env).job.trainer.devices == 2


def test_an_empty_value_names_the_variable_that_was_not_set(ft, isolated_home):
    assert "SLURM_GPUS_PER_NODE" not in os.environ
    result = ft("train", "--factory", "tiny", "trainer.devices=", "trainer.max_steps=")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trainer.devices= has no value: $SLURM_GPUS_PER_NODE is not set here" in result.stderr
    assert "#SBATCH --gpus-per-node=N" in result.stderr
    assert "trainer.max_steps= has no value" in result.stderr
    assert not (isolated_home / "jobs").exists()


@pytest.mark.parametrize("overrides, env, expected", [
    (["trainer.devices=2"], srun_env(0, 1), "write `#SBATCH --ntasks-per-node=2`"),
    (["trainer.num_nodes=2"], srun_env(0, 1), "write `#SBATCH --nodes=2`"),
    ([], srun_env(0, 2, 2), "pass trainer.num_nodes=2"),
    (["trainer.devices=2"], {"RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "x"}, "torchrun --nnodes 1 --nproc-per-node 2"),
    (["trainer.devices=2"], {}, "torchrun --nproc-per-node 2"),
    ([], {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "start it with srun"),
])
def test_the_allocation_must_match_the_job_and_the_message_says_what_to_change(overrides, env, expected, isolated_home):
    with pytest.raises(UserError) as err:
        train.prepare("tiny", overrides, environ=env)
    assert expected in problems(err)


# --- one folder, written by task 0 --------------------------------------------------------------


def test_task_0_writes_the_folder_whole_and_the_others_wait_for_it(isolated_home):
    plans = [train.prepare("tiny", ["trainer.num_nodes=2"], environ=srun_env(r, 2, 2, SLURM_SUBMIT_DIR="/w"))
             for r in (0, 1)]
    with pytest.raises(UserError) as err:  # task 0 never came: a bounded wait, then this task says so
        train.agree_on_folder(plans[1], "ft train\n", wait_s=0.3)
    assert "task 1 waited 0.3 s for task 0 to write the job folder" in problems(err) and "$FT_HOME" in err.value.hint
    train.agree_on_folder(plans[0], "ft train --factory tiny\n")
    train.agree_on_folder(plans[1], "ft train --factory tiny\n", wait_s=0.3)
    folder = plans[0].folder
    assert sorted(p.name for p in folder.iterdir()) == [".run.lock", "command.txt", "config.yaml", "logs", "submission.json"]
    record = json.loads((folder / "submission.json").read_text())
    assert (record["executor"], record["job_id"], record["submit_dir"]) == ("srun", "4242", "/w")
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    view = jobs.find("4242", isolated_home / "jobs")
    assert view.folder == folder and jobs.state(view, ask_scheduler=False) == "PENDING"


def test_a_requeued_job_finds_its_folder_and_refuses_other_settings(isolated_home):
    first = train.prepare("tiny", SHORT, environ=srun_env())
    train.agree_on_folder(first, "ft train\n")
    (first.folder / "checkpoints").mkdir()
    again = train.prepare("tiny", SHORT, environ=srun_env(SLURM_RESTART_COUNT="1"))
    train.agree_on_folder(again, "ft train\n")
    assert (again.folder / "checkpoints").is_dir()  # the same folder, untouched
    changed = train.prepare("tiny", [*SHORT, "trainer.max_steps=5"], environ=srun_env())
    with pytest.raises(UserError) as err:
        train.agree_on_folder(changed, "ft train\n")
    assert "trainer.max_steps: 3 → 5" in problems(err) and f"--job-dir {first.folder}" in err.value.hint
    on_purpose = train.prepare("tiny", [*SHORT, "trainer.max_steps=5"], None, str(first.folder),
                               environ=srun_env(job_id="4300"))
    train.agree_on_folder(on_purpose, "ft train --job-dir\n")
    assert yaml.safe_load((first.folder / "config.yaml").read_text())["trainer"]["max_steps"] == 5
    record = json.loads((first.folder / "submission.json").read_text())
    assert record["job_id"] == "4300" and record["history"][0]["job_id"] == "4242"
    assert jobs.find("4242", isolated_home / "jobs").folder == first.folder  # the first id still finds it


def test_resubmit_of_an_ft_train_folder_says_how_to_resubmit_the_script(ft, isolated_home):
    plan = train.prepare("tiny", [], environ=srun_env(SLURM_SUBMIT_DIR="/home/me/workshop"))
    train.agree_on_folder(plan, "ft train\n")
    result = ft("resubmit", "4242")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ran `ft train` from your batch script (submitted from /home/me/workshop)" in result.stderr
    assert "scontrol requeue 4242" in result.stderr and f"--job-dir {plan.folder}" in result.stderr
    assert "starts from the beginning" in result.stderr


def test_a_stopped_ft_train_run_reads_as_preempted(isolated_home):
    plan = train.prepare("tiny", [], environ=srun_env())
    train.agree_on_folder(plan, "ft train\n")
    for name, fields in (("start", {}), ("signal", {}), ("exit", {"code": 75})):
        records.record_event(plan.folder, name, **fields)
    view = jobs.find("4242", isolated_home / "jobs")
    assert jobs.state(view, ask_scheduler=False).startswith("PREEMPTED")
    assert jobs.is_finished(jobs.state(view, ask_scheduler=False))


# --- the print-srun line ------------------------------------------------------------------------


def test_print_srun_prints_the_line_for_a_workshops_script_and_writes_nothing(ft, isolated_home, tmp_path):
    image = tmp_path / "nemo.sif"
    image.write_text("image")
    result = ft("submit", "--factory", "tiny", "--dry-run", "--print-srun", "trainer.max_steps=250",
                "container.runtime=singularity", f"container.image={image}", "data.global_batch_size=8")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("srun singularity exec --nv")
    words = shlex.split(line.replace("\\\n", " "))
    command = words[words.index(str(image)) + 1:]
    assert command == ["python", "-m", "launcher", "train", "--factory", "tiny", "trainer.max_steps=250",
                       "container.runtime=singularity", f"container.image={image}", "data.global_batch_size=8"]
    for package in (*contract.FT_TRAIN_PACKAGES, "factories"):
        assert f"{REPO / package}:{contract.MOUNT_POINT}/{package}:ro" in words
    assert f"PYTHONPATH={contract.MOUNT_POINT}" in words
    assert "#SBATCH --nodes=1" in result.stderr and "#SBATCH --ntasks-per-node=1" in result.stderr
    assert subprocess.run(["bash", "-n"], input=line, text=True).returncode == 0
    # No job folder; only the folder `ft train` will make them in, which the line binds.
    assert list((isolated_home / "jobs").iterdir()) == []
    refused = ft("submit", "--factory", "tiny", "--print-srun")
    assert refused.returncode == 2 and "use it with --dry-run" in refused.stderr


# --- the hand-over: really training -------------------------------------------------------------


def _blocking_sitecustomize(folder: Path) -> Path:
    """A `sitecustomize` that refuses the launcher's own dependencies outside the image contract
    (typer, rich, jinja2 and what they pull in), as in an image without ft installed. It clears
    its switch, so the trainer `ft train` execs into starts unrestricted."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    contract_dists = {p.dist.lower() for p in contract.REQUIRED}
    blocked = sorted({d.split(">")[0].split("=")[0].strip().lower() for d in declared} - contract_dists)
    blocked += ["click", "markupsafe", "pygments", "shellingham", "markdown_it"]
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os, sys
        if os.environ.pop("FT_TEST_NO_LAUNCHER_DEPS", None):
            class Refuse:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {blocked!r}:
                        raise ImportError(f"{{name}} is not in this image")
            sys.meta_path.insert(0, Refuse())
    """))
    assert "typer" in blocked and "rich" in blocked and "jinja2" in blocked
    return folder


@pytest.mark.train
def test_alone_it_trains_in_this_process_with_only_the_image_contract(tmp_path, isolated_home):
    site = _blocking_sitecustomize(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "TORCHELASTIC"))}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), FT_TEST_NO_LAUNCHER_DEPS="1")
    argv = [sys.executable, "-m", "launcher", "train", "--factory", "tiny", "--yes", "peft=lora", *SHORT]
    probe = subprocess.run([sys.executable, "-c", "import typer"], env=env, capture_output=True, text=True)
    assert "typer is not in this image" in probe.stderr  # the blocker works
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = Path(result.stdout.split("Job folder: ")[1].split()[0])
    assert "step 3/3 " in result.stdout
    assert [e["event"] for e in map(json.loads, (folder / "events.jsonl").read_text().splitlines())] == ["start", "exit"]
    assert "step 3/3 " in (folder / "logs" / "rank-0.out").read_text()
    assert json.loads((folder / "submission.json").read_text())["executor"] == "local"
    assert (folder / "checkpoints" / "step-000003" / "adapter_model.safetensors").is_file()
    assert (folder / "command.txt").read_text().startswith("ft train --factory tiny --yes peft=lora")
    assert jobs.state(jobs.load(folder)) == "COMPLETED"


@pytest.mark.train
def test_under_torchrun_two_processes_share_one_folder(tmp_path, isolated_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "TORCHELASTIC"))}
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "launcher",
            "train", "--factory", "tiny", "trainer.devices=2", *SHORT]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (isolated_home / "jobs").iterdir()
    assert folder.name.startswith("torchrun-") and result.stdout.count("Job folder: ") == 1
    assert "2 process(es) (torchrun)" in result.stdout
    assert sorted(p.name for p in (folder / "logs").iterdir()) == ["rank-0.out", "rank-1.out"]
    assert json.loads((folder / "submission.json").read_text())["executor"] == "torchrun"
    assert (folder / "checkpoints" / "step-000003").is_dir()


# --- --job-dir: one run per folder, and only a folder of the same job ---------------------------


def test_two_ft_train_in_one_folder_the_second_is_refused_naming_the_first(ft, tmp_path):
    folder = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen([sys.executable, "-m", "launcher", "train", "--factory", "tiny", "--job-dir", str(folder),
                              "trainer.max_steps=100000", "trainer.log_every_steps=1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not (folder / layout.METRICS).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        config = (folder / "config.yaml").read_text()
        second = ft("train", "--factory", "tiny", "--job-dir", str(folder), "trainer.max_steps=7")
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert f"{folder} is in use: a run trains in it right now" in second.stderr
        assert f"process {first.pid} on " in second.stderr  # the trainer is `ft train` itself, after exec
        assert (folder / "config.yaml").read_text() == config
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 75


def test_ft_train_refuses_a_folder_of_another_job_and_says_whose(ft, tmp_path):
    dry = ft("submit", "--factory", "tiny", "--dry-run")
    submitted = Path(dry.stderr.rsplit("Job folder: ", 1)[1].strip())
    before = {p.name: p.read_bytes() for p in submitted.iterdir() if p.is_file()}
    result = ft("train", "--factory", "tiny", "--job-dir", str(submitted))
    assert result.returncode == 2 and "which `ft submit` made" in result.stderr and "ft resubmit" in result.stderr
    assert {p.name: p.read_bytes() for p in submitted.iterdir() if p.is_file()} == before  # no lock written either

    other = tmp_path / "other"
    train.agree_on_folder(train.prepare("tiny", [], None, str(other), environ={}), "ft train\n")
    jobdir.release_run_lock(other)  # that run is over
    layout_config = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**layout_config, "name": "llama3_8b_lora"}))
    json_record = json.loads((other / "submission.json").read_text())
    (other / "submission.json").write_text(json.dumps({**json_record, "factory": "llama3_8b_lora"}))
    result = ft("train", "--factory", "tiny", "--job-dir", str(other))
    assert result.returncode == 2 and "of factory llama3_8b_lora, not tiny" in result.stderr, result.stderr

    strange = tmp_path / "papers"
    strange.mkdir()
    (strange / "thesis.tex").write_text("x")
    result = ft("train", "--factory", "tiny", "--job-dir", str(strange))
    assert result.returncode == 2 and "not empty and not a job folder" in result.stderr
    assert sorted(p.name for p in strange.iterdir()) == ["thesis.tex"]


def test_ft_train_never_follows_a_link_at_the_run_lock(ft, tmp_path):
    folder = tmp_path / "run"
    train.agree_on_folder(train.prepare("tiny", [], None, str(folder), environ={}), "ft train\n")
    jobdir.release_run_lock(folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    (folder / jobdir.RUN_LOCK).unlink()
    (folder / jobdir.RUN_LOCK).symlink_to(victim)
    result = ft("train", "--factory", "tiny", "--job-dir", str(folder), *SHORT)
    assert result.returncode == 2 and "is a symbolic link, which ft never follows" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n" and (victim.stat().st_mode & 0o777) == 0o600
    (folder / jobdir.RUN_LOCK).unlink()
    os.mkfifo(folder / jobdir.RUN_LOCK)
    result = ft("train", "--factory", "tiny", "--job-dir", str(folder), *SHORT)
    assert result.returncode == 2 and "is not a plain file" in result.stderr, result.stderr


@pytest.mark.parametrize("garbage", [b"\xff\xfe{", b"[1, 2]", b'{"job_id": '])
def test_a_garbage_record_under_job_dir_is_one_line(ft, tmp_path, garbage):
    folder = tmp_path / "run"
    train.agree_on_folder(train.prepare("tiny", [], None, str(folder), environ={}), "ft train\n")
    jobdir.release_run_lock(folder)
    (folder / "submission.json").write_bytes(garbage)
    result = ft("train", "--factory", "tiny", "--job-dir", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds a damaged record" in result.stderr and (folder / "submission.json").read_bytes() == garbage


def test_continuing_with_other_settings_says_so_and_keeps_every_command(isolated_home, capsys):
    first = train.prepare("tiny", SHORT, None, str(isolated_home / "run"), environ={})
    train.agree_on_folder(first, "ft train --job-dir run\n")
    more = train.prepare("tiny", [*SHORT, "trainer.max_steps=5"], None, str(isolated_home / "run"), environ={})
    train.agree_on_folder(more, "ft train --job-dir run trainer.max_steps=5\n")
    said = capsys.readouterr().err
    assert f"continuing {first.folder} with changed settings: trainer.max_steps: 3 → 5" in said
    assert (first.folder / "command.txt").read_text() == (
        "ft train --job-dir run\nft train --job-dir run trainer.max_steps=5\n")
