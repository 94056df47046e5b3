"""The bytes of model state a training process actually holds, by what `ft plan` calls them.

    held = memory.held(built.module, optimizer)    # {"weights": ..., "gradients": ..., "optimizer": ...}

Counted from the tensors themselves: each parameter's local shard (NF4 codes and scales for a
quantized weight), each gradient — including the unsharded gradients FSDP2 accumulates while
it defers the reduce-scatter — and Adam's moments. tests/trainer/test_plan_vs_trainer.py
holds these to the plan's rows. The per-step scalar `step` counters of Adam (4 bytes per
tensor, kept on the host) are left out on both sides.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .quantize import is_nf4


def nbytes(tensor: torch.Tensor | None) -> int:
    """Bytes a tensor holds in this process: a DTensor's shard, an NF4 tensor's codes and scales."""
    if tensor is None:
        return 0
    local = getattr(tensor, "_local_tensor", tensor)
    if is_nf4(local):
        return sum(getattr(local, name).nbytes for name in local.__tensor_flatten__()[0])
    return local.nbytes


def _fsdp_unsharded_grads(module: nn.Module) -> int:
    """Gradients FSDP2 holds unsharded between micro batches (no reduce-scatter yet)."""
    from torch.distributed.fsdp import FSDPModule

    total = 0
    for sub in module.modules():
        if not isinstance(sub, FSDPModule):
            continue
        for group in sub._get_fsdp_state()._fsdp_param_groups:  # private: read-only here
            for fsdp_param in group.fsdp_params:
                unsharded = getattr(fsdp_param, "_unsharded_param", None)
                total += nbytes(unsharded.grad if unsharded is not None else None)
                total += nbytes(fsdp_param.unsharded_accumulated_grad)
    return total


def held(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    params = list(module.parameters())
    moments = [t for state in (optimizer.state.values() if optimizer else ()) for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0]
    return {
        "weights": sum(nbytes(p) for p in params),
        "gradients": sum(nbytes(p.grad) for p in params) + _fsdp_unsharded_grads(module),
        "optimizer": sum(nbytes(t) for t in moments),
    }
