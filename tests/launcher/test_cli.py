"""The command line as a user meets it: real `ft` processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from launcher import jobdir


def test_help_lists_the_commands(ft):
    result = ft("--help")
    assert result.returncode == 0
    for command in ("factories", "show", "submit"):
        assert command in result.stdout


def test_factories_table_lists_builtin_and_user_factories(ft, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_recipe.yaml").write_text("extends: tiny\ndescription: my own recipe\n")
    result = ft("factories", env={"FT_FACTORY_PATH": str(mine), "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for name in ("llama31_8b", "llama3_8b_sft", "llama3_8b_lora", "llama32_1b_squad",
                 "llama31_405b_lora", "qwen25_1_5b", "tiny", "my_recipe"):
        assert name in result.stdout
    assert "my own recipe" in result.stdout and "$FT_FACTORY_PATH" in result.stdout


def test_show_prints_every_field_and_explain_describes_them(ft):
    result = ft("show", "--factory", "llama31_8b", "trainer.max_steps=7")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["trainer"]["max_steps"] == 7 and shown["slurm"]["time"] == "02:00:00"
    explained = ft("show", "--factory", "llama31_8b", "--explain").stdout
    assert "# Optimizer steps to run" in explained and "max_steps: 250    # default: null" in explained


def test_errors_are_listed_together_without_traceback(ft, isolated_home):
    result = ft("submit", "--factory", "llama31_8b", "trainer.max_step=3", "optim.lr=fast", "--yes")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "did you mean trainer.max_steps" in result.stderr and "optim.lr" in result.stderr
    assert not isolated_home.exists()  # nothing written


def test_dry_run_writes_the_folder_and_prints_the_script_without_sbatch(ft, isolated_home, tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    result = ft("submit", "--factory", "llama31_8b", "trainer.max_steps=250", "data.global_batch_size=8",
                "--dry-run", env={"PATH": f"{empty_bin}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=ft-llama31_8b")
    (folder,) = (isolated_home / "jobs").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["command.txt", "config.yaml", "job.sbatch", "logs"]
    assert (folder / "job.sbatch").read_text() == result.stdout
    assert yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["max_steps"] == 250
    assert "trainer.max_steps=250" in (folder / "command.txt").read_text()
    assert f"dry run: nothing submitted. Job folder: {folder}" in " ".join(result.stderr.split())


def test_submit_without_terminal_or_yes_refuses(ft, isolated_home):
    result = ft("submit", "--factory", "llama31_8b", input="")
    assert result.returncode == 2 and "pass --yes" in result.stderr
    assert not (isolated_home / "jobs").exists()


def test_submit_without_sbatch_suggests_dry_run(ft, tmp_path, isolated_home):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    result = ft("submit", "--factory", "llama31_8b", "--yes", env={"PATH": str(empty_bin)})
    assert result.returncode == 2
    assert "sbatch is not on PATH" in result.stderr and "--dry-run" in result.stderr
    assert not (isolated_home / "jobs").exists()


def test_missing_image_and_bind_sources_are_caught_before_submitting(ft, tmp_path, isolated_home):
    missing = [f"container.image={tmp_path}/none.sif", f"container.binds=[{tmp_path}/nowhere:/data]"]
    result = ft("submit", "--factory", "llama31_8b", "--yes", *missing)
    assert result.returncode == 2
    assert "none.sif does not exist" in result.stderr and "bind source" in result.stderr
    assert not (isolated_home / "jobs").exists()
    # A dry run works on a laptop, which has none of the cluster's paths: it only warns.
    dry = ft("submit", "--factory", "llama31_8b", "--dry-run", *missing)
    assert dry.returncode == 0, dry.stderr
    assert "warning: container.image" in dry.stderr and "none.sif does not exist" in dry.stderr
    assert "warning: container.binds: bind source" in dry.stderr


def test_secrets_from_the_environment_never_reach_the_job_folder(ft, isolated_home):
    secret = "hf_SECRET_never_on_disk_123"
    result = ft("submit", "--factory", "llama31_8b", "--dry-run", env={"HF_TOKEN": secret})
    assert result.returncode == 0
    for path in (isolated_home / "jobs").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text()


def test_concurrent_job_folders_are_distinct_and_complete(tmp_path):
    folders: list[Path] = []

    def make():
        folders.append(jobdir.create("tiny", lambda f: {"config.yaml": f"folder: {f}\n"}, tmp_path))

    threads = [threading.Thread(target=make) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(folders)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in folders)  # no temp leftovers
    for folder in folders:
        assert (folder / "config.yaml").read_text() == f"folder: {folder}\n"


def test_submission_record_round_trips(tmp_path):
    jobdir.write_record(tmp_path, job_id="42", executor="slurm")
    record = json.loads((tmp_path / jobdir.RECORD).read_text())
    assert record["job_id"] == "42" and record["ft_version"]
    assert jobdir.read_record(tmp_path)["job_id"] == "42"


def test_help_names_overrides_and_a_bare_factory_name_gets_the_command(ft):
    for command in ("submit", "show", "plan", "stage"):
        shown = ft(command, "--help")
        assert "[KEY=VALUE]" in shown.stdout and "trainer.max_steps=250" in shown.stdout, command
    assert "KEY=VALUE" in ft("train", "--help").stdout
    result = ft("submit", "llama31_8b", "trainer.max_steps=3")
    assert result.returncode == 2
    assert "ft submit --factory llama31_8b trainer.max_steps=3" in result.stderr
    assert "Traceback" not in result.stderr
    result = ft("show")
    assert result.returncode == 2 and "missing --factory" in result.stderr
