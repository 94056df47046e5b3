"""Rank 0's record of training: a log line per step, the same figures in ``metrics.jsonl``.

    step 12/250 (4%) | epoch 0 | loss 0.4358 | grad_norm 23.9 | lr 1.0e-05 | mem 15.5 GiB | tps 9069 | 0:12 elapsed, 4:08 left

``metrics.jsonl`` holds one JSON object per line: training steps (``loss``, ``grad_norm``,
``lr``, ``mem_gib``, ``tps``, and the progress ``total_steps``, ``elapsed_s``, ``remaining_s``
that `ft status` shows; preference tuning adds TRL's ``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``), validations
(``val_loss``, and ``val_rewards/margins`` ...), and at the end of a run its summary
(``"end": true``). TensorBoard and W&B get the same numbers when they are installed and
asked for.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

from ftcore import layout, progress, records
from ftcore.files import write_atomic


def memory_gib(device: torch.device) -> float:
    """Peak allocated on the GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def step_line(record: dict) -> str:
    r = records
    clocks = progress.times(record.get(r.ELAPSED_S), record.get(r.REMAINING_S))
    return (
        f"step {progress.steps(record[r.STEP], record.get(r.TOTAL_STEPS))} | epoch {record[r.EPOCH]} | "
        f"loss {record[r.LOSS]:.4f} | grad_norm {record[r.GRAD_NORM]:.3g} | lr {record[r.LR]:.1e} | "
        f"mem {record[r.MEM_GIB]:.1f} GiB | tps {record[r.TPS]:.0f}" + figures_text(record)
        + (f" | {clocks}" if clocks else "")
    )


# The objective's figures a log line shows, in this order (metrics.jsonl holds every one).
SHOWN = (records.REWARDS_MARGINS, records.REWARDS_ACCURACIES, records.REWARDS_CHOSEN, records.REWARDS_REJECTED,
         records.NLL_LOSS)


def figures_text(record: dict, prefix: str = "") -> str:
    return "".join(f" | {prefix}{key} {record[prefix + key]:.4g}" for key in SHOWN if prefix + key in record)


class Metrics:
    """Writes only on rank 0; on other ranks every method does nothing."""

    def __init__(self, job_dir: Path, job, is_main: bool, resume_step: int, total_steps: int | None = None):
        self.is_main = is_main
        self.file = None
        self.tensorboard = None
        self.wandb = None
        # Progress: the pace of this process's own steps gives the time left.
        self.total_steps = total_steps
        self.started, self.start_step = time.perf_counter(), resume_step
        self.val_losses: dict[int, float] = {}  # step → val_loss, this run and the runs it resumes
        if not is_main:
            return
        path = job_dir / layout.METRICS
        if path.exists():
            # Steps after the checkpoint we resume from will be run again: drop their old records,
            # and the summary of a run that this one continues. Whole or not at all: a kill here
            # must not lose the steps that are kept.
            lines = path.read_bytes().decode(errors="replace").splitlines()
            kept = [(line, record) for line in lines
                    if (record := _record(line)) is not None and record.get(records.STEP, 0) <= resume_step
                    and not record.get(records.END)]
            write_atomic(path, "".join(line + "\n" for line, _ in kept))
            for _, record in kept:
                if isinstance(record.get(records.VAL_LOSS), (int, float)):
                    self.val_losses[record[records.STEP]] = record[records.VAL_LOSS]
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

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {**record, **self._progress(record[records.STEP])}
        self.print(step_line(record))
        self._write(record, prefix="train")

    def _progress(self, step: int) -> dict:
        if not self.total_steps:
            return {}
        elapsed = self.elapsed()
        left = progress.remaining(elapsed, step - self.start_step, self.total_steps - step)
        return {records.TOTAL_STEPS: self.total_steps, records.ELAPSED_S: round(elapsed, 1),
                **({records.REMAINING_S: round(left, 1)} if left is not None else {})}

    def validation(self, step: int, val_loss: float, tokens: int, figures: dict[str, float] | None = None) -> None:
        """`figures`: the objective's (preference tuning: `rewards/margins`, ...), written with `val_` before them."""
        self.val_losses[step] = val_loss
        if not self.is_main:
            return
        record = {records.STEP: step, records.VAL_LOSS: val_loss, records.VAL_TOKENS: tokens,
                  **{records.VAL_PREFIX + key: value for key, value in (figures or {}).items()}}
        self.print(f"step {step} | val_loss {val_loss:.4f} | val_tokens {tokens}" + figures_text(record, records.VAL_PREFIX))
        self._write(record, prefix="val")

    def finish(self, step: int, checkpoint: Path) -> None:
        """The run's summary: a last log line a person reads, and a record `ft status` reads."""
        if not self.is_main:
            return
        summary = {records.STEP: step, records.END: True, records.TOTAL_STEPS: self.total_steps,
                   records.ELAPSED_S: round(self.elapsed(), 1), records.CHECKPOINT: str(checkpoint)}
        done = f"{step}" if step == self.total_steps else f"{step} of {self.total_steps}"
        line = f"done: {done} steps in {progress.clock(self.elapsed())}"
        if self.val_losses:
            last = max(self.val_losses)
            best = min(self.val_losses, key=self.val_losses.get)
            summary.update({records.FINAL_VAL_LOSS: self.val_losses[last], records.BEST_VAL_LOSS: self.val_losses[best],
                            records.BEST_STEP: best})
            line += (f" | val_loss final {self.val_losses[last]:.4f} (step {last}), "
                     f"best {self.val_losses[best]:.4f} (step {best})")
        self.print(f"{line} | checkpoint {checkpoint}")
        self.file.write(json.dumps({**summary, records.WALL_TIME: round(time.time(), 3)}) + "\n")

    def _write(self, record: dict, prefix: str) -> None:
        self.file.write(json.dumps({**record, records.WALL_TIME: round(time.time(), 3)}) + "\n")
        numbers = {f"{prefix}/{k}": v for k, v in record.items() if k != records.STEP and isinstance(v, (int, float))}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, record[records.STEP])
        if self.wandb is not None:
            self.wandb.log(numbers, step=record[records.STEP])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _record(line: str) -> dict | None:
    try:
        record = json.loads(line)
        if isinstance(record, dict) and isinstance(record.get(records.STEP, 0), int):
            return record
    except ValueError:
        pass
    print(f"{layout.METRICS}: dropping unreadable line {line[:60]!r}", file=sys.stderr)
    return None
