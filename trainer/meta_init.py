"""Meta-device init: build the model without memory, shard it, then fill each rank's rows.

A 405B model never exists whole on one host: every parameter is created on the meta device,
FSDP2 shards the (empty) model, and each rank reads only its own rows (`weights.reader`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ftcore import policy
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

    An NF4 shard is read the same way; its ranks then agree on NF4's shared scale of scales
    (`quantize.fill_shard`). Rank 0 says how much of the weights it read.
    """
    lm = module.lm  # a PeftModel for LoRA: its names are what the reader is asked for
    # With CPU offload FSDP2 keeps the shards in host memory: they are made there.
    module.to_empty(device="cpu" if decision.cpu_offload else device)
    reader = weights.reader(job, lm)
    read_bytes = read_numel = 0

    def read(name: str, start: int, stop: int) -> torch.Tensor:
        nonlocal read_bytes, read_numel
        rows = reader(name, start, stop)
        read_bytes += rows.numel() * rows.element_size()
        read_numel += rows.numel()
        return rows

    with torch.no_grad():
        _recompute_buffers(module.causal_lm)
        for name, param in lm.named_parameters():
            if quantize.is_nf4(param):
                quantize.fill_shard(param, lambda a, b, name=name: read(name, a, b), env.rank, env.world_size)
                continue
            local = param.to_local()
            start, _ = policy.shard_span(param.shape[0], env.world_size, env.rank)
            local.copy_(read(name, start, start + local.shape[0]).to(local.dtype))
    if env.rank == 0:  # only rank 0 logs; every rank reads the same share
        total = sum(p.numel() for p in lm.parameters())
        print(f"ft trainer: meta-device init: rank {env.rank} read {read_bytes / 2**30:.3g} GiB, "
              f"{100 * read_numel / total:.1f}% of the model's weights (its own rows)", flush=True)


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
