"""Tokens/s of one small job with 1 and with 2 SLURM tasks, through `ft submit` on a real cluster.

    scripts/slurm-up.sh                 # the local two-node test cluster (idempotent)
    python bench/scaling.py [--method lora|sft] [--steps 30] [--tasks 1,2]

Each job is submitted with `python -m launcher submit --factory tiny ... --yes` (one task per
node, `trainer.num_nodes=N`), waited for, and read back from its metrics.jsonl: the trainer's
`tps` counts the real tokens of the whole global batch (all ranks) per second of wall time.
The first two logged steps (start-up, first-step warm-up) are left out.

The local cluster's two "nodes" are two slurmd daemons on one host: with 2 tasks, both share
that host's cores (OMP_NUM_THREADS is split so the total thread count stays the same), and
"communication" is gloo over loopback. The result says what ft's data-parallel path costs
on one host, not how it scales across real nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A 4-layer, 256-wide random Llama on ft's bundled QA data: big enough that compute, not
# Python overhead, fills a step; small enough for a few minutes on two cores.
MODEL = ["model.config.hidden_size=256", "model.config.intermediate_size=688", "model.config.num_hidden_layers=4",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=4"]


def submit(tasks: int, args, home: Path) -> tuple[str, Path]:
    threads = max(1, (os.cpu_count() or 1) // tasks)
    overrides = [
        *MODEL,
        "peft=lora" if args.method == "lora" else "peft=none",
        f"trainer.num_nodes={tasks}", "trainer.devices=1",
        f"trainer.max_steps={args.steps}", "trainer.val_every_steps=null", "trainer.limit_val_batches=0",
        "trainer.log_every_steps=1", "checkpoint.every_steps=null",
        f"data.global_batch_size={args.global_batch}", f"data.micro_batch_size={args.micro_batch}",
        "data.max_seq_length=256", "slurm.time=00:20:00", "slurm.partition=debug",
        f"container.env.OMP_NUM_THREADS={threads}",
    ]
    env = dict(os.environ, FT_HOME=str(home), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "launcher", "submit", "--factory", "tiny", *overrides, "--yes"],
                          env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ft submit failed:\n{done.stdout}{done.stderr}")
    lines = done.stdout.splitlines()
    job_id = next(l for l in lines if l.startswith("Submitted batch job ")).split()[-1]
    folder = Path(next(l for l in lines if l.startswith("Job folder: ")).split(": ", 1)[1])
    return job_id, folder


def wait(job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if out and out not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return out
        time.sleep(2)
    raise SystemExit(f"job {job_id} still running after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["lora", "sft"], default="lora")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--tasks", default="1,2")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ft-scaling-"))
    print(f"{args.method} | 4-layer 256-wide random Llama | {args.steps} steps × global batch {args.global_batch} "
          f"(micro {args.micro_batch}) | host has {os.cpu_count()} cores")
    rows = {}
    for tasks in (int(t) for t in args.tasks.split(",")):
        job_id, folder = submit(tasks, args, home)
        state = wait(job_id, timeout=1200)
        records = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
        tps = [r["tps"] for r in records if "tps" in r][2:]
        if state != "COMPLETED" or not tps:
            raise SystemExit(f"job {job_id} ended {state}; logs in {folder / 'logs'}")
        rows[tasks] = sum(tps) / len(tps)
        print(f"  {tasks} task(s): job {job_id} {state}, {rows[tasks]:.0f} tokens/s (mean of steps 3–{args.steps})", flush=True)
    print()
    print("| tasks | tokens/s (all ranks) | × 1 task |")
    print("|---:|---:|---:|")
    one = rows.get(1)
    for tasks, tps in rows.items():
        print(f"| {tasks} | {tps:.0f} | {tps / one:.2f}× |" if one else f"| {tasks} | {tps:.0f} | – |")


if __name__ == "__main__":
    main()
