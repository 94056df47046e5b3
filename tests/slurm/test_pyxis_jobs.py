"""Pyxis jobs on the real local SLURM cluster: `ft submit` with container.runtime=pyxis trains on
two nodes, each task in the stock image as a squashfs through the Pyxis stand-in
(tests/standin/pyxis: srun's --container-* options, enroot's view under bubblewrap); and the
rendered script passes the real sbatch's own check (`sbatch --test-only`).

FT_HOME, the model and the data are under /srv/ft-test-* and the job is submitted from another
folder: every path the job needs must reach the container through --container-mounts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from container_image import PYXIS_STANDIN, pyxis_env
from slurm_cluster import sbatch, wait_for_job

pytestmark = [pytest.mark.slurm]


def test_ft_submit_trains_on_two_nodes_through_pyxis(slurm_cluster, ft, pyxis_site):
    site = pyxis_site
    result = ft("submit", "--factory", "tiny", *site.overrides("pyxis", str(site.squashfs)), "peft=lora",
                "trainer.num_nodes=2", "trainer.max_steps=3", "trainer.val_every_steps=3", "data.max_seq_length=64",
                "slurm.time=00:05:00", "--yes", env=site.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image check passed" in result.stdout + result.stderr  # enroot start on the login node
    job_id = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("Submitted batch job"))
    folder = Path(next(line for line in result.stdout.splitlines() if line.startswith("Job folder: ")).split(": ", 1)[1])

    state, fields = wait_for_job(job_id, timeout=300)
    logs = "\n".join(p.read_text() for p in (folder / "logs").glob("*.out"))
    assert state == "COMPLETED" and int(fields["NumTasks"]) == 2, f"{state}\n{logs}"
    assert (folder / "checkpoints" / "step-000003" / "adapter_model.safetensors").is_file()
    assert "2 process(es) (slurm)" in logs

    script = (folder / "job.sbatch").read_text()
    assert f"--container-image={site.squashfs}" in script and "exec" not in script.split("\nsrun ", 1)[1]
    tasks = [c for c in site.calls() if c["command"][-1] == str(folder / "config.yaml")]
    assert sorted(c["slurm"]["SLURMD_NODENAME"] for c in tasks) == ["n1", "n2"], site.log.read_text()
    for call in tasks:
        root = Path(call["root"])
        assert root != Path("/") and (root / "usr" / "bin" / "python").exists() and not (root / "work").exists()
        shown = {m["dst"]: m["opts"] for m in call["mounts"] if m["kind"] == "bind"}
        assert {str(site.model), str(site.data), str(site.val)} <= {d for d, o in shown.items() if o == "ro"}
        assert shown[str(folder)] == "rw" and shown["/opt/ft/trainer"] == "ro"
        assert call["pwd"] == str(folder) and call["spec"]["name"] == f"ft-{job_id}"
        assert call["command"][:4] == ["env", "PYTHONPATH=/opt/ft", "python", "-m"]


def test_the_rendered_pyxis_script_passes_sbatch_test_only(slurm_cluster, ft, pyxis_site, tmp_path):
    """What sbatch itself can check of the script (its #SBATCH lines, the allocation they ask)."""
    site = pyxis_site
    dry = ft("submit", "--factory", "tiny", *site.overrides("pyxis", str(site.squashfs)), "trainer.num_nodes=2",
             "slurm.time=00:05:00", "slurm.partition=debug", "--dry-run", env=site.env)
    assert dry.returncode == 0, dry.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(dry.stdout[dry.stdout.index("#!/bin/bash"):])
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    checked = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
    assert checked.returncode == 0 and "to start at" in checked.stderr, checked.stderr
    bad = script.read_text().replace("#SBATCH --nodes=2", "#SBATCH --nodes=3")  # more than the cluster has
    script.write_text(bad)
    refused = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                             cwd=tmp_path)
    assert refused.returncode != 0 and "node configuration is not available" in refused.stderr


def test_image_check_runs_through_srun_where_enroot_is_absent(slurm_cluster, ft, pyxis_site, tmp_path):
    """A login node with Pyxis's srun but no enroot: `ft image check --runtime pyxis` runs the probe
    in a one-task job step, `srun --container-image`."""
    site = pyxis_site
    only_srun = tmp_path / "bin"
    only_srun.mkdir()
    (only_srun / "srun").symlink_to(PYXIS_STANDIN / "srun")
    env = {**site.env, "PATH": f"{only_srun}{os.pathsep}{os.environ['PATH']}"}
    result = ft("image", "check", str(site.squashfs), "--runtime", "pyxis", env=env)
    assert result.returncode == 0 and "ok: this image can run ft's trainer" in result.stdout, result.stderr
    (probe,) = [c for c in site.calls() if c["command"][-2:] == ["-m", "ftcore.contract"]]
    assert probe["slurm"].get("SLURM_JOB_ID") and probe["spec"]["image"] == str(site.squashfs)


def test_later_steps_of_a_job_reuse_its_named_container(slurm_cluster, stock_squashfs, tmp_path):
    """Two srun steps with the container name ft renders: the second finds the container and
    skips the import, whatever image it names."""
    log = tmp_path / "log.jsonl"
    name = '--container-name=ft-"${SLURM_JOB_ID:?}"'
    script = tmp_path / "two-steps.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --nodes=1
#SBATCH --output={tmp_path}/out-%j.txt
srun --container-image={stock_squashfs} {name} true
srun --container-image={tmp_path}/gone.sqsh {name} true
""")
    env = {**os.environ, **pyxis_env(stock_squashfs), "FT_STANDIN_LOG": str(log)}
    job_id = sbatch([str(script)], cwd=tmp_path, env=env)
    state, _ = wait_for_job(str(job_id), timeout=120)
    output = next(tmp_path.glob("out-*.txt")).read_text()
    assert state == "COMPLETED", output
    steps = [r for r in map(json.loads, log.read_text().splitlines()) if r["argv"][0] == "task"]
    assert [(r["slurm"]["SLURM_STEP_ID"], r.get("reused", False)) for r in steps] == [("0", False), ("1", True)]
    assert {r["spec"]["name"] for r in steps} == {f"ft-{job_id}"}
