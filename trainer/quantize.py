"""NF4 storage of a frozen base (QLoRA) with torchao, replicated or sharded by FSDP2.

Which weights: every frozen nn.Linear inside a decoder layer whose shape the policy says NF4
can hold (`Decision.stores_nf4`); embeddings, norms and the output head stay in the compute
dtype. torchao's NF4Tensor dequantizes to the input's dtype inside each matmul (forward and
backward), on CPU as on CUDA, so this whole path runs in the CPU tests; only its speed and
CPU offload need a GPU (bench/qlora_gpu.py).

FSDP2 shards an NF4Tensor like any parameter and all-gathers it still quantized; under
meta-device init each rank quantizes only its own rows with the whole weight's scale of scales,
bit for bit the shard of the whole weight quantized at once (`tests/trainer/test_qlora.py`; how:
docs/plan.md, "NF4").
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ftcore import policy


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


def quantize_rows(rows: torch.Tensor, block_size: int, scaler_block_size: int,
                  all_absmax: torch.Tensor | None = None, first_block: int = 0):
    """NF4 of `rows`, with the scale-of-scales mean taken over `all_absmax` (the whole weight's
    block absmax values, in order; `rows`' own start at `first_block`) instead of over `rows`
    alone; None: `rows` is the whole weight. torchao's NF4Tensor.from_tensor, with that one mean
    from outside."""
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import (NF4Tensor, SubclassTensorArgs,
                                                                          get_block_absmax)

    whole = NF4Tensor.from_tensor(rows, block_size, scaler_block_size)  # codes and the NF4 table
    if all_absmax is None:
        return whole
    mean = all_absmax.mean()
    scalers = all_absmax[first_block:first_block + whole.n_blocks] - mean
    n_scaler_blocks = scalers.numel() // scaler_block_size
    blocks = scalers.view(n_scaler_blocks, scaler_block_size)
    factor = 256 / (2 * get_block_absmax(scalers, scaler_block_size))
    quantized = (blocks * factor.unsqueeze(-1)).round().clamp(-128, 127)
    meta = SubclassTensorArgs(rows.size(), rows.stride(), rows.storage_offset(), rows.dtype, rows.device,
                              rows.requires_grad)
    return NF4Tensor(meta, block_size, whole.n_blocks, scaler_block_size, quantized.flatten().to(torch.int8),
                     factor.contiguous(), mean, whole.quantized_data, nf4=whole.nf4)


def block_absmax(rows: torch.Tensor, block_size: int) -> torch.Tensor:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import get_block_absmax

    return get_block_absmax(rows.flatten(), block_size)


@torch.no_grad()
def fill_shard(param: torch.Tensor, read_rows, rank: int, world: int, group=None) -> int:
    """Give an FSDP2 shard of an NF4 weight (or a whole one) its rows, read with
    `read_rows(start, stop)` (any float dtype); returns the rows read.

    A sharded weight: each rank reads its rows only and the ranks of `group` all-gather their
    block absmax values for the shared mean (a collective: every rank calls this for every NF4
    weight, in the same order). The shard's inner tensors are replaced, not copied into: after
    `to_empty` a meta NF4 shard has storage for its codes and scales but not for its mean and
    code table.
    """
    local = getattr(param, "_local_tensor", param)  # a plain parameter when FSDP2 leaves it alone
    device, dtype = local.quantized_data.device, local.dtype
    rows = param.shape[0]
    sharded = local is not param and local.shape[0] != rows
    start, stop = policy.shard_span(rows, world, rank) if sharded else (0, rows)
    mine = read_rows(start, stop).to(device=device, dtype=dtype).contiguous()
    if not sharded:
        quantized = quantize_rows(mine, local.block_size, local.scaler_block_size)
    else:
        import torch.distributed as dist

        per_row = param.shape[1] // local.block_size  # block absmax values per row
        counts = [(b - a) * per_row for a, b in (policy.shard_span(rows, world, r) for r in range(world))]
        padded = torch.zeros(max(counts), device=device, dtype=dtype)
        ours = block_absmax(mine, local.block_size) if stop > start else padded[:0]
        padded[:ours.numel()] = ours
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        all_absmax = torch.cat([g[:n] for g, n in zip(gathered, counts)])
        quantized = quantize_rows(mine, local.block_size, local.scaler_block_size, all_absmax,
                                  first_block=sum(counts[:rank]))
    for name in local.__tensor_flatten__()[0]:
        setattr(local, name, getattr(quantized, name).clone())
    return stop - start
