"""Meta-device init: build the model without memory, shard it, then fill each rank's rows.

A 405B model never exists whole on one host: every parameter is created on the meta device,
FSDP2 shards the (empty) model, and each rank reads only its own rows (`weights.reader`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ftcore.errors import UserError

from . import quantize, weights
from .dist import DistEnv


def empty_model(config, **kwargs) -> nn.Module:
    """The model with every parameter and buffer on the meta device: no memory, no init."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, **kwargs)


def materialize(module: nn.Module, job, env: DistEnv, device: torch.device, decision) -> None:
    """Give the meta shards of `module` (a sharded CausalLMLoss) real memory and their values.

    An NF4 shard is the exception to reading only one's rows: the whole projection is read
    and quantized, because all shards of a weight share NF4's scale of scales.
    """
    lm = module.lm  # a PeftModel for LoRA: its names are what the reader is asked for
    # With CPU offload FSDP2 keeps the shards in host memory: they are made there.
    module.to_empty(device="cpu" if decision.cpu_offload else device)
    read = weights.reader(job, lm)
    with torch.no_grad():
        _recompute_buffers(module.causal_lm)
        for name, param in lm.named_parameters():
            if quantize.is_nf4(param):
                quantize.fill_shard(param, read(name, 0, param.shape[0]), env.rank, env.world_size)
                continue
            local = param.to_local()
            # FSDP2 shards dim 0 like torch.chunk: ceil(n / world) rows per rank.
            rows = -(-param.shape[0] // env.world_size)
            start = min(env.rank * rows, param.shape[0])
            local.copy_(read(name, start, start + local.shape[0]).to(local.dtype))


def _recompute_buffers(causal: nn.Module) -> None:
    """Buffers (RoPE frequencies) follow from the config: the model's own init recomputes them.

    Only modules without parameters of their own are re-initialised, so no weight is touched.
    Each buffer is first set to NaN: one the model's init does not fill is refused, not used.
    """
    for name, module in causal.named_modules():
        buffers = [b for b in module.buffers(recurse=False) if b.is_floating_point()]
        if not buffers:
            continue
        for b in buffers:
            b.fill_(float("nan"))
        if next(module.parameters(recurse=False), None) is None:
            causal._init_weights(module)
        if any(b.isnan().any() for b in buffers):
            raise UserError(
                f"model.meta_init: this transformers version does not recompute the buffers of {name} "
                f"({type(module).__name__}) after meta-device init; set model.meta_init=false"
            )
