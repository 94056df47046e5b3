"""The local SLURM cluster behaves as ft's sbatch scripts expect.

These pin down the SLURM behaviours ft relies on (multi-node srun, signals, requeue,
#SBATCH quoting) on the real daemons started by scripts/slurm-up.sh.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slurm_cluster import (
    sbatch,
    wait_for_file,
    wait_for_job,
    wait_for_state,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]


def _script(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


def test_two_node_job_runs_one_task_per_node(slurm_cluster, tmp_path):
    out = tmp_path / "out.txt"
    job = sbatch(
        [
            "--nodes=2",
            "--ntasks-per-node=1",
            f"--output={out}",
            "--wrap",
            'srun bash -c "echo task=\\$SLURM_PROCID node=\\$SLURMD_NODENAME ntasks=\\$SLURM_NTASKS"',
        ],
        cwd=tmp_path,
    )
    state, fields = wait_for_job(job, timeout=120)
    assert state == "COMPLETED", (fields, out.read_text() if out.exists() else "")
    assert fields["ExitCode"] == "0:0"
    assert fields["NodeList"] == "n[1-2]"
    lines = sorted(ln for ln in out.read_text().splitlines() if ln.startswith("task="))
    assert lines == ["task=0 node=n1 ntasks=2", "task=1 node=n2 ntasks=2"]


def test_scancel_signal_usr1_batch_reaches_batch_script(slurm_cluster, tmp_path):
    script = _script(
        tmp_path / "job.sh",
        f"""
        #!/bin/bash
        #SBATCH --output={tmp_path}/job.out
        # proctrack/linuxproc loses children that outlive the batch shell: kill them.
        trap 'echo "got USR1" > {tmp_path}/marker; kill $SLEEPER; exit 0' USR1
        sleep 120 &
        SLEEPER=$!
        echo ready > {tmp_path}/ready
        wait $SLEEPER
        echo "no signal" > {tmp_path}/marker
        exit 3
        """,
    )
    job = sbatch([str(script)], cwd=tmp_path)
    wait_for_file(tmp_path / "ready", timeout=60)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], check=True, timeout=30)
    state, fields = wait_for_job(job, timeout=60)
    assert (tmp_path / "marker").read_text().strip() == "got USR1"
    assert state == "COMPLETED", fields
    assert fields["ExitCode"] == "0:0"


def test_srun_forwards_usr1_from_batch_shell_to_every_task(slurm_cluster, tmp_path):
    """`kill -USR1 <srun pid>` in the batch shell reaches the tasks on both nodes.

    slurmstepd signals every process of the step (proctrack), not only the task's
    first process: children of a task get USR1 too (bash reports its `sleep` child
    killed by 'User defined signal 1').
    """
    script = _script(
        tmp_path / "job.sh",
        f"""
        #!/bin/bash
        #SBATCH --nodes=2
        #SBATCH --ntasks-per-node=1
        #SBATCH --output={tmp_path}/job.out
        srun bash -c 'trap "echo task $SLURM_PROCID got USR1; exit 0" USR1
                      touch {tmp_path}/ready.$SLURM_PROCID
                      for i in $(seq 600); do sleep 0.2; done
                      echo task $SLURM_PROCID no signal; exit 4' &
        SRUN=$!
        for i in $(seq 300); do
            [ -e {tmp_path}/ready.0 ] && [ -e {tmp_path}/ready.1 ] && break
            sleep 0.2
        done
        kill -USR1 "$SRUN"
        wait "$SRUN"
        echo "srun rc=$?"
        """,
    )
    job = sbatch([str(script)], cwd=tmp_path)
    state, fields = wait_for_job(job, timeout=120)
    out = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED", (fields, out)
    assert "task 0 got USR1" in out and "task 1 got USR1" in out, out
    assert "srun rc=0" in out, out


def test_sbatch_strips_quotes_in_directives(slurm_cluster, tmp_path):
    """#SBATCH values are shell-like words: quotes are removed, `#` starts a comment."""
    script = _script(
        tmp_path / "job.sh",
        f"""
        #!/bin/bash
        #SBATCH --job-name='a b'
        #SBATCH --comment="x y"
        #SBATCH --output={tmp_path}/job.out
        echo "name=[$SLURM_JOB_NAME]"
        """,
    )
    job = sbatch([str(script)], cwd=tmp_path)
    state, fields = wait_for_job(job, timeout=60)
    assert state == "COMPLETED", fields
    assert fields["JobName"] == "a b"
    assert fields["Comment"] == "x y"
    assert (tmp_path / "job.out").read_text().strip() == "name=[a b]"

    # An unquoted '#' ends the value (even inside a word); a quoted one is kept.
    script2 = _script(
        tmp_path / "job2.sh",
        f"""
        #!/bin/bash
        #SBATCH --job-name=k#not-part
        #SBATCH --comment="p#q"
        #SBATCH --output={tmp_path}/job2.out
        true
        """,
    )
    job2 = sbatch([str(script2)], cwd=tmp_path)
    state, fields = wait_for_job(job2, timeout=60)
    assert fields["JobName"] == "k"
    assert fields["Comment"] == "p#q"

    # An unbalanced quote is a submission error, not a silently mangled value.
    bad = _script(tmp_path / "bad.sh", "#!/bin/bash\n#SBATCH --comment=it's\ntrue\n")
    proc = subprocess.run(["sbatch", str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert proc.returncode != 0
    assert "Unmatched" in proc.stderr


def test_requeue_restarts_the_job(slurm_cluster, tmp_path):
    """`scontrol requeue` puts a --requeue job back in the queue; it restarts with
    SLURM_RESTART_COUNT=1. A requeued job is held ~120 s (Reason=BeginTime) unless
    its StartTime is reset."""
    script = _script(
        tmp_path / "job.sh",
        f"""
        #!/bin/bash
        #SBATCH --requeue
        #SBATCH --open-mode=append
        #SBATCH --output={tmp_path}/job.out
        echo "start restart=${{SLURM_RESTART_COUNT:-0}}"
        touch {tmp_path}/ready.${{SLURM_RESTART_COUNT:-0}}
        if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 120; fi
        echo "end restart=${{SLURM_RESTART_COUNT:-0}}"
        """,
    )
    job = sbatch([str(script)], cwd=tmp_path)
    wait_for_file(tmp_path / "ready.0", timeout=60)
    subprocess.run(["scontrol", "requeue", str(job)], check=True, timeout=30)
    state, fields = wait_for_state(job, {"PENDING"}, timeout=60)
    assert fields["Restarts"] == "1"
    assert fields["Reason"] == "BeginTime"
    # Released only once the old run's step is gone from the node: a job started while its
    # previous credential is still being revoked is killed ("Job credential revoked"), which a
    # loaded machine makes likely (seen in CI).
    time.sleep(15)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    state, fields = wait_for_job(job, timeout=90)
    out = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED", (fields, out)
    assert "start restart=0" in out and "start restart=1" in out and "end restart=1" in out, out
    assert "end restart=0" not in out, out


def test_singularity_standin_under_srun_on_two_nodes(slurm_cluster, stock_image, tmp_path):
    """The sbatch shape ft renders: srun singularity exec --nv IMAGE python ..., in the stock image
    (a file that is no image is refused, as Apptainer refuses it)."""
    image = stock_image
    log = tmp_path / "standin.jsonl"
    env = slurm_cluster.env_with_standin()
    env["FT_STANDIN_LOG"] = str(log)
    code = "import os; print('rank', os.environ['SLURM_PROCID'], 'in', os.environ['SINGULARITY_CONTAINER'])"
    job = sbatch(
        [
            "--nodes=2",
            "--ntasks-per-node=1",
            f"--output={tmp_path}/job.out",
            "--wrap",
            f'srun singularity exec --nv --bind {tmp_path} "{image}" python3 -c "{code}"',
        ],
        cwd=tmp_path,
        env=env,
    )
    state, fields = wait_for_job(job, timeout=120)
    out = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED", (fields, out)
    assert sorted(ln for ln in out.splitlines() if ln.startswith("rank")) == [
        f"rank 0 in {image}",
        f"rank 1 in {image}",
    ]
    records = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert len(records) == 2
    assert all(r["nv"] and r["image"] == str(image) and "error" not in r for r in records)
    assert sorted(r["slurm"]["SLURMD_NODENAME"] for r in records) == ["n1", "n2"]
    assert all(r["binds"] == [{"src": str(tmp_path), "dst": str(tmp_path), "opts": "rw"}] for r in records)
