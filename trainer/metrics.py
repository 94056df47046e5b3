"""Rank 0's record of training: a log line per step, the same figures in ``metrics.jsonl``.

    step 12 | epoch 0 | loss 0.4358 | grad_norm 23.9 | lr 1.0e-05 | mem 15.5 GiB | tps 9069

``metrics.jsonl`` holds one JSON object per line: training steps (``loss``, ``grad_norm``,
``lr``, ``mem_gib``, ``tps``) and validations (``val_loss``). TensorBoard and W&B get the same
numbers when they are installed and asked for.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

from ftcore.files import write_atomic

from ftcore import layout


def memory_gib(device: torch.device) -> float:
    """Peak allocated on the GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def step_line(r: dict) -> str:
    return (
        f"step {r['step']} | epoch {r['epoch']} | loss {r['loss']:.4f} | grad_norm {r['grad_norm']:.3g} | "
        f"lr {r['lr']:.1e} | mem {r['mem_gib']:.1f} GiB | tps {r['tps']:.0f}"
    )


class Metrics:
    """Writes only on rank 0; on other ranks every method does nothing."""

    def __init__(self, job_dir: Path, job, is_main: bool, resume_step: int):
        self.is_main = is_main
        self.file = None
        self.tensorboard = None
        self.wandb = None
        if not is_main:
            return
        path = job_dir / layout.METRICS
        if path.exists():
            # Steps after the checkpoint we resume from will be run again: drop their old records.
            # Whole or not at all: a kill here must not lose the steps that are kept.
            lines = path.read_bytes().decode(errors="replace").splitlines()
            kept = [line for line in lines if _step(line) <= resume_step]
            write_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a", buffering=1)
        if job.trainer.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(job_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                self.print("tensorboard is not installed: skipping TensorBoard logging")
        if job.trainer.wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=job.trainer.wandb_project, name=job.job_name, dir=str(job_dir), resume="allow")
            except ImportError:
                self.print("wandb is not installed: skipping W&B logging")

    def print(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)  # flushed: SLURM log files are read while the job runs

    def step(self, record: dict) -> None:
        if not self.is_main:
            return
        self.print(step_line(record))
        self._write(record, prefix="train")

    def validation(self, step: int, val_loss: float, tokens: int) -> None:
        if not self.is_main:
            return
        self.print(f"step {step} | val_loss {val_loss:.4f} | val_tokens {tokens}")
        self._write({"step": step, "val_loss": val_loss, "val_tokens": tokens}, prefix="val")

    def _write(self, record: dict, prefix: str) -> None:
        self.file.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        numbers = {f"{prefix}/{k}": v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, record["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        print(f"{layout.METRICS}: dropping unreadable line {line[:60]!r}", file=sys.stderr)
        return sys.maxsize
