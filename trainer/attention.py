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
* otherwise on a GPU (fp32, or neither kernel installed): one SDPA call over the whole row with
  a block-diagonal causal mask built on the device from the boundaries, so the host never
  waits; the price is attention over the row (quadratic in its length, not in each example's);
* on a CPU: causal SDPA once per example, ``enable_gqa=True``; the lengths are read on the
  host, which costs nothing there.

Sliding windows (Mistral, Gemma 3, gpt-oss's layers...) apply within each example on every
kernel. Soft-capping and attention sinks do not exist here: ``ftcore.families`` picks the
model's own attention for those families (and this module refuses them, never ignores them).

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
    # No variable-length kernel: on a CPU, SDPA per example (reading the lengths on the host is
    # free there); on a GPU, one SDPA call over the row with a block mask built on the device
    # (no host sync, but attention over the whole row: quadratic in its length).
    return "sdpa_masked" if query.is_cuda else "sdpa_per_example"


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, sliding_window=None,
                softcap=None, s_aux=None, **kwargs):
    """(1, heads, tokens, dim) → (1, tokens, heads, dim), as transformers expects.

    `sliding_window` (transformers' convention: a query sees the `sliding_window` newest keys,
    itself included) is applied within each example. Soft-capping and sinks are not: the
    family registry (ftcore.families) never routes those models here, and this refuses them
    rather than compute another function.
    """
    cu = kwargs.get(CU_SEQ_LENS)
    if cu is None:
        raise ValueError(f"{NAME} runs padding-free rows only (trainer.collate.collate_padding_free)")
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: a padding-free batch is one row, got {query.shape[0]}")
    if softcap is not None or s_aux is not None:
        raise ValueError(f"{NAME} cannot apply attention soft-capping or sinks: this model needs its own attention "
                         "(ftcore.families)")
    dropout = dropout if module.training else 0.0
    longest = kwargs[MAX_LENGTH]
    window = (sliding_window - 1, 0) if sliding_window else (-1, 0)
    chosen = kernel(query)
    if chosen == "torch_varlen" and dropout:  # torch's varlen_attn has no dropout
        chosen = "sdpa_masked"
    if chosen in ("flash_attn", "torch_varlen"):
        # (tokens, heads, dim): the layout of both variable-length kernels. A narrower value
        # head (MLA) is padded to the query's width, and the output cut back.
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
        value_dim = v.shape[-1]
        if value_dim != q.shape[-1]:
            v = F.pad(v, (0, q.shape[-1] - value_dim))
        if chosen == "flash_attn":
            from flash_attn import flash_attn_varlen_func

            out = flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, dropout_p=dropout, softmax_scale=scaling,
                                         causal=True, window_size=window)
        else:
            out = contract.torch_varlen_attn()(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=window, enable_gqa=True)
        return out[None, ..., :value_dim], None
    if chosen == "sdpa_masked":
        return _masked(query, key, value, cu, dropout, scaling, sliding_window), None
    return _per_example(query, key, value, cu, dropout, scaling, sliding_window), None


def _causal_mask(rows: torch.Tensor, cols: torch.Tensor, sliding_window) -> torch.Tensor:
    allowed = cols[None, :] <= rows[:, None]
    if sliding_window:
        allowed &= cols[None, :] > rows[:, None] - sliding_window
    return allowed


@torch.compiler.disable  # data-dependent split: run eagerly, and guard a compiled layer on nothing here
def _per_example(query, key, value, cu, dropout, scaling, sliding_window=None):
    lengths = cu.diff().tolist()  # host read: free on a CPU, where this runs (see `kernel`)
    outputs = []
    for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2)):
        if sliding_window and q.shape[2] > sliding_window:
            positions = torch.arange(q.shape[2], device=q.device)
            mask = _causal_mask(positions, positions, sliding_window)
            outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                                          enable_gqa=True))
        else:
            outputs.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                                          enable_gqa=True))
    return torch.cat(outputs, 2).transpose(1, 2).contiguous()


def _masked(query, key, value, cu, dropout, scaling, sliding_window=None):
    """One SDPA call over the row, examples kept apart by a mask built on the device: no host sync."""
    positions = torch.arange(query.shape[2], device=query.device)
    example = torch.searchsorted(cu[1:], positions, right=True)
    mask = _causal_mask(positions, positions, sliding_window) & (example[:, None] == example[None, :])
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         enable_gqa=True)
    return out.transpose(1, 2).contiguous()


def register() -> str:
    """Make ``ft_varlen`` a name transformers accepts for ``attn_implementation``."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_sdpa)
    return NAME
