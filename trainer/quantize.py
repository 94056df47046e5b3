"""NF4 storage of a frozen base (QLoRA) with torchao, replicated or sharded by FSDP2.

Which weights: every frozen nn.Linear inside a decoder layer whose shape the policy says NF4
can hold (`Decision.stores_nf4`); embeddings, norms and the output head stay in the compute
dtype. torchao's NF4Tensor dequantizes to the input's dtype inside each matmul (forward and
backward), on CPU as on CUDA, so this whole path runs in the CPU tests; only its speed and
CPU offload need a GPU (bench/qlora_gpu.py).

FSDP2 shards an NF4Tensor like any parameter (its inner tensors split by rows) and
all-gathers it still quantized. All shards of one weight must share NF4's scale of scales
(one mean per tensor), so a weight is quantized whole and then split: under meta-device
init each rank reads the whole projection, quantizes it, and keeps its own rows.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn


def _nf4():
    # torchao announces each optional CUDA kernel it cannot load on this machine; NF4 needs none.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor

    return nf4_tensor


def is_nf4(tensor: torch.Tensor) -> bool:
    local = getattr(tensor, "_local_tensor", tensor)  # a DTensor's shard
    return type(local).__name__ == "NF4Tensor"


def frozen_linears(layers: list[nn.Module]) -> list[nn.Linear]:
    """The frozen linear layers inside decoder layers: the base's projections (the adapters,
    nn.Linear too, are trainable)."""
    return [m for layer in layers for m in layer.modules()
            if isinstance(m, nn.Linear) and not m.weight.requires_grad]


def quantize_(layers: list[nn.Module], decision) -> int:
    """Replace each frozen projection the policy stores in NF4 by its NF4 form, in place;
    return how many. On the meta device this only shapes placeholders (see `fill_shard`)."""
    nf4 = _nf4()
    count = 0
    for linear in frozen_linears(layers):
        rows, cols = linear.weight.shape
        if decision.stores_nf4(rows, cols):
            linear.weight = nn.Parameter(nf4.to_nf4(linear.weight.detach()), requires_grad=False)
            count += 1
    return count


@torch.no_grad()
def fill_shard(param: torch.Tensor, full: torch.Tensor, rank: int, world: int) -> None:
    """Give an FSDP2 shard of an NF4 weight (or a whole one) its rows of `full` (any float dtype).

    The shard's inner tensors are replaced, not copied into: after `to_empty` a meta NF4
    shard has storage for its codes and scales but not for its mean and code table.
    """
    nf4 = _nf4()
    local = getattr(param, "_local_tensor", param)  # a plain parameter when FSDP2 leaves it alone
    quantized = nf4.to_nf4(full.to(device=local.quantized_data.device, dtype=local.dtype).contiguous(),
                           local.block_size, local.scaler_block_size)
    mine = torch.chunk(quantized, world, dim=0)[rank]
    for name in local.__tensor_flatten__()[0]:
        setattr(local, name, getattr(mine, name).clone())

