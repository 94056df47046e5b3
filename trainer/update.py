"""The weight update's numerics, all on the device: gradient norm, clipping, non-finite guard.

Nothing here reads a value back to the host; the loop does that only at its sync points
(`trainer.train`). The pieces, as torchtitan writes them:

* the gradient norm is computed once (`get_total_norm`; under FSDP2 one `full_tensor()`
  reduces the shards' partial norms) and reused for clipping (`clip_grads_with_norm_`), only
  when something needs it: `trainer.grad_clip`, or a logged step;
* a step whose gradient is not finite is skipped *by the optimizer, on the device*: fused
  AdamW takes a ``found_inf`` flag (the mechanism of torch's GradScaler) and leaves weights,
  moments and step count untouched when it is set. A NaN loss makes a NaN gradient, so the
  gradient is what is checked; it is checked after the reduction over ranks, so every rank
  skips the same steps.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def optimizer(cfg, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW/Adam, fused: one kernel for all parameters, and it honours ``found_inf``."""
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, fused=True)


def total_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients (a plain tensor on the device, never synced)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=True)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2: the shards' partial norms, reduced once
        norm = norm.full_tensor()
    return norm


def clip(params: list[torch.nn.Parameter], max_norm: float | None, want_norm: bool) -> torch.Tensor | None:
    """Clip to `max_norm` (None: off) with one norm computation; the norm, or None when
    neither clipping nor the caller needed it."""
    if max_norm is None and not want_norm:
        return None
    norm = total_norm(params)
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


class Guard:
    """Marks a step with a non-finite gradient for the optimizer to skip, and counts them.

    `counts()` (a device tensor: steps skipped so far, first such step or -1) is read by the
    loop at its sync points only.
    """

    def __init__(self, device: torch.device, sharded: bool, comm_device: torch.device | None = None):
        """`device`: where the trained weights live (the host under model.cpu_offload);
        `comm_device`: where collectives run (the GPU), when that differs."""
        self.sharded = sharded
        self.comm_device = comm_device or device
        self.found = torch.zeros(1, device=device)
        self.skipped = torch.zeros((), device=device)
        self.first = torch.full((), -1.0, device=device)

    def mark(self, optim: torch.optim.Optimizer, params: list[torch.nn.Parameter], step: int,
             norm: torch.Tensor | None) -> None:
        """Set ``optim.found_inf`` for optimizer step `step` (1-based) before ``optim.step()``."""
        if norm is not None:  # global already (after the reduction, and full_tensor under FSDP2)
            self.found.copy_(torch.logical_not(torch.isfinite(norm)).reshape(1))
        else:
            self.found.zero_()
            local = [_local(p.grad) for p in params if p.grad is not None]
            torch._amp_foreach_non_finite_check_and_unscale_(local, self.found, torch.ones_like(self.found))
            if self.sharded and dist.is_initialized():  # each rank holds a different shard
                flag = self.found.to(self.comm_device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                self.found.copy_(flag)
        bad = self.found[0]
        self.skipped += bad
        self.first.copy_(torch.where((self.first < 0) & (bad > 0), torch.full_like(self.first, step), self.first))
        optim.found_inf = self.found.reshape(())  # read by the fused kernel: skip everything when set

    def counts(self) -> torch.Tensor:
        return torch.stack([self.skipped, self.first])


def _local(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_local() if hasattr(grad, "to_local") else grad
