"""The learning-rate schedule: a pure function of the step, owned here so that the trainer
follows it and the launcher can say what an override does to a run it resumes.

Linear warmup to `optim.lr`, then `constant`, `linear` or `cosine` decay to `min_lr` at the
last step. Resuming needs nothing but the step; but the total number of steps is part of the
formula, so raising `trainer.max_steps` for a resumed run stretches the decay from the top.
"""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, optim) -> float:
    """Learning rate for optimizer step `step` (1-based); `optim` is the job's OptimConfig."""
    schedule = optim.lr_scheduler
    if step <= schedule.warmup_steps:
        return optim.lr * step / schedule.warmup_steps
    if schedule.name == "constant":
        return optim.lr
    # 0 at the first step after warmup, 1 at the last step.
    progress = min(1.0, (step - schedule.warmup_steps - 1) / max(1, total_steps - schedule.warmup_steps - 1))
    factor = 1 - progress if schedule.name == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return schedule.min_lr + (optim.lr - schedule.min_lr) * factor
