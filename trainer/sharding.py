"""FSDP2: one unit per decoder layer (all-gathered just in time), then the root."""

from __future__ import annotations

import torch
import torch.nn as nn

from ftcore import dtypes
from ftcore.errors import UserError

from . import quantize
from .dist import DistEnv


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (what transformers itself never splits across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # By class ancestry: FSDP2 swaps each sharded layer's class for a subclass (FSDPLlamaDecoderLayer).
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise UserError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return layers


def shard(module: nn.Module, env: DistEnv, device: torch.device, decision) -> None:
    """Shard `module` (a CausalLMLoss) in place as `decision` (ftcore.policy) says: each decoder
    layer, then the root; gathered in the compute dtype, gradients reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (env.world_size,))
    options = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=getattr(torch, dtypes.TORCH[decision.compute]),
                                                                reduce_dtype=torch.float32)}
    if decision.cpu_offload:
        # A GPU job's lever (the schema refuses it on CPU jobs; tests shard on the CPU with it):
        # shards, gradients and the optimizer step stay in pinned host memory; each unit is
        # copied in for its all-gather. The gradient norm then reduces CPU tensors: the process
        # group has gloo for them (`dist.backend`).
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    if env.world_size == 1:
        # One process has nothing to shard, and torch's one-process FSDP2 path copies only
        # the first part of a tensor that gathers as several (NF4: codes and two scales):
        # NF4 weights stay plain parameters on the device, outside FSDP2.
        options["ignored_params"] = {p for p in module.parameters() if quantize.is_nf4(p)}
        for sub in module.modules():
            if any(p in options["ignored_params"] and p.device.type != "meta" for p in sub.parameters(recurse=False)):
                sub.to(device)
    for layer in decoder_layers(module.causal_lm):
        fully_shard(layer, **options)
    fully_shard(module, **options)
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
