"""The QLoRA pieces only CUDA can check: NF4 gathered over NCCL, CPU offload, real memory peaks.

    python bench/qlora_gpu.py [--gpus N] [--out /tmp/ft-qlora-gpu]      # on a GPU machine with torchao

Trains a randomly initialised model of Llama 3.2 1B's shape (no download) for 6 steps on
ft's bundled QA data in three layouts — NF4 data parallel on 1 GPU, NF4 sharded with FSDP2
over N GPUs (meta-device init), and the same with `model.cpu_offload` — and prints, per
layout, the trainer's peak GPU memory (`mem_gib`: torch.cuda.max_memory_allocated) beside
`ft plan`'s total for the same job, and the last loss. On CPU the tests hold the plan's
weights, gradients and optimizer rows to the trainer's tensors to the byte
(tests/trainer/test_plan_vs_trainer.py); this is where the estimated rows meet a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ftcore import arch  # noqa: E402
from ftcore.schema import validate  # noqa: E402
from launcher import plan  # noqa: E402

MODEL = {**arch.PUBLISHED["meta-llama/Llama-3.2-1B"], "max_position_embeddings": 4096}


def job(gpus: int, **model) -> dict:
    return {
        "name": "qlora-gpu", "model": {"init": "random", "config": MODEL, "dtype": "bf16", "quantization": "nf4",
                                       "activation_checkpointing": True, **model},
        "peft": {"dim": 16, "alpha": 32, "target_modules": "*.proj"},
        "data": {"path": "ft:tiny_qa.jsonl", "format": "squad", "max_seq_length": 512,
                 "global_batch_size": 4 * gpus, "micro_batch_size": 2, "val_fraction": 0},
        "trainer": {"accelerator": "gpu", "devices": gpus, "max_steps": 6, "limit_val_batches": 0,
                    "strategy": "fsdp2" if model.get("meta_init") else "ddp"},
        "container": {"runtime": "none"},
    }


def run(name: str, raw: dict, out: Path) -> dict:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    gpus = raw["trainer"]["devices"]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "trainer",
               "--config", str(folder / "config.yaml")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"layout": name, "error": (done.stdout + done.stderr)[-2000:]}
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    return {"layout": name, "measured_gib": max(r["mem_gib"] for r in steps),
            "planned_gib": plan.estimate(validate(raw)).total / plan.GIB, "last_loss": steps[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2, help="GPUs for the sharded layouts (at least 2)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ft-qlora-gpu"))
    args = parser.parse_args()
    layouts = {"nf4-ddp-1gpu": job(1), f"nf4-fsdp2-{args.gpus}gpu": job(args.gpus, meta_init=True),
               f"nf4-fsdp2-offload-{args.gpus}gpu": job(args.gpus, meta_init=True, cpu_offload=True)}
    print("| layout | peak GiB (trainer) | plan total GiB | last loss |")
    print("|---|---:|---:|---:|")
    for name, raw in layouts.items():
        r = run(name, raw, args.out)
        if "error" in r:
            print(f"| {name} | failed | | |\n\n{r['error']}\n")
            continue
        print(f"| {name} | {r['measured_gib']:.2f} | {r['planned_gib']:.2f} | {r['last_loss']:.4f} |")


if __name__ == "__main__":
    main()
