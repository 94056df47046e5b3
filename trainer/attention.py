"""Padding-free attention: a micro batch as one row of its examples laid end to end.

``data.padding_free`` (the default) collates a micro batch into a single row. Every linear
layer then sees real tokens only, no padding; attention stays within each example, whose
boundaries travel as a tensor of cumulative lengths (``cu_seq_lens_q``, int32, on the device)
and the longest example's length (``max_length_q``): transformers' own names for them, so
flash-attention reads the same keywords. A tensor, not a Python list: a compiled decoder
layer guards on its shape only, instead of recompiling for every new set of lengths.

The kernel, best first (all causal, grouped-query attention without copying key/value heads):

* flash-attention's ``flash_attn_varlen_func`` when the package is installed (CUDA, bf16);
* torch's own ``torch.nn.attention.varlen.varlen_attn`` (CUDA, bf16/fp16);
* otherwise (CPU, or fp32 on a GPU) causal SDPA once per example, ``enable_gqa=True``. There
  is no variable-length kernel for these; the lengths are read on the host, which on a CPU
  costs nothing (on a GPU it would be one sync per layer: the kernels above avoid it).

Registered with transformers as the attention implementation ``ft_varlen``, with no mask
function of its own: transformers then builds no mask and does not inspect the position ids
for packed rows (a host sync per forward). The name lives on the in-memory config only:
transformers does not write it to config.json, so checkpoints load with the usual ``sdpa``.
Hidden states equal the padded layout's up to rounding (tested).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ftcore import contract

NAME = "ft_varlen"
CU_SEQ_LENS = "cu_seq_lens_q"  # transformers' keyword names (FlashAttentionKwargs)
MAX_LENGTH = "max_length_q"


def boundaries(seq_lens, device: torch.device | str = "cpu") -> dict:
    """The keywords a padding-free row carries to every attention call."""
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    torch.cumsum(torch.as_tensor(seq_lens, dtype=torch.int32), 0, out=cu[1:])
    cu = cu.to(device, non_blocking=True)
    longest = int(max(seq_lens))
    return {CU_SEQ_LENS: cu, "cu_seq_lens_k": cu, MAX_LENGTH: longest, "max_length_k": longest}


def kernel(query: torch.Tensor) -> str:
    """Which kernel a padding-free row with these queries runs on."""
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16):
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attn"
        if contract.torch_varlen_attn() is not None:  # present, and with the keywords ft passes
            return "torch_varlen"
    return "sdpa_per_example"


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(1, heads, tokens, dim) → (1, tokens, heads, dim), as transformers expects."""
    cu = kwargs.get(CU_SEQ_LENS)
    if cu is None:
        raise ValueError(f"{NAME} runs padding-free rows only (trainer.collate.collate_padding_free)")
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: a padding-free batch is one row, got {query.shape[0]}")
    dropout = dropout if module.training else 0.0
    longest = kwargs[MAX_LENGTH]
    # (tokens, heads, dim): the layout of both variable-length kernels
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    chosen = kernel(query)
    if chosen == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, dropout_p=dropout, softmax_scale=scaling,
                                     causal=True)
    elif chosen == "torch_varlen" and dropout == 0.0:
        out = contract.torch_varlen_attn()(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=(-1, 0), enable_gqa=True)
    else:
        return _per_example(query, key, value, cu, dropout, scaling), None
    return out[None], None


@torch.compiler.disable  # data-dependent split: run eagerly, and guard a compiled layer on nothing here
def _per_example(query, key, value, cu, dropout, scaling):
    lengths = cu.diff().tolist()  # host read: free on a CPU (see the module docstring)
    outputs = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=True)
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
    ]
    return torch.cat(outputs, 2).transpose(1, 2).contiguous()


def register() -> str:
    """Make ``ft_varlen`` a name transformers accepts for ``attn_implementation``."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_sdpa)
    return NAME
