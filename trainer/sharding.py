"""FSDP2: one unit per decoder layer (all-gathered just in time), then the root."""

from __future__ import annotations

import torch
import torch.nn as nn

from ftcore.errors import UserError

from .dist import DistEnv


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (what transformers itself never splits across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # By class ancestry: FSDP2 swaps each sharded layer's class for a subclass (FSDPLlamaDecoderLayer).
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise UserError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return layers


def shard(module: nn.Module, env: DistEnv, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Shard `module` (a CausalLMLoss) in place: each decoder layer, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(module.causal_lm):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(module, mesh=mesh, mp_policy=mp)
    set_gradient_sum(module)


def set_gradient_sum(module: nn.Module) -> None:
    """Reduce-scatter gradients as a sum over ranks, not FSDP's default mean: the loss is
    already divided by the global answer-token count (`trainer.train`)."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)
            if hasattr(unit, "set_force_sum_reduction_for_comms"):  # torch ≥ 2.8
                unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
