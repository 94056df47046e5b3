"""Padding-free attention (``ft_varlen``): a micro batch as one row of its examples laid end to end.

The row carries its boundaries as ``cu_seq_lens_q`` (int32, on the device) and ``max_length_q``
(transformers' own keyword names); attention stays causal within each example, sliding window
included, and equals the padded layout's up to rounding. The kernel is chosen once per build
(`choose`, policy in ``ftcore.families.varlen_kernel``) and registered as a constant (`register`);
SDPA never gets a mask together with grouped heads. Soft-capping and sinks are refused.
Why, and which kernel each torch runs: docs/architecture.md, "The padding-free kernel".
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch
import torch.nn.functional as F

from ftcore import contract, dtypes, families

try:
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:  # before torch 2.10
    _torch_varlen_attn = None

NAME = "ft_varlen"
CU_SEQ_LENS = "cu_seq_lens_q"  # transformers' keyword names (FlashAttentionKwargs)
MAX_LENGTH = "max_length_q"
_registered: list[families.Kernel] = []


def boundaries(seq_lens, device: torch.device | str = "cpu") -> dict:
    """The keywords a padding-free row carries to every attention call."""
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    torch.cumsum(torch.as_tensor(seq_lens, dtype=torch.int32), 0, out=cu[1:])
    cu = cu.to(device, non_blocking=True)
    longest = int(max(seq_lens))
    return {CU_SEQ_LENS: cu, "cu_seq_lens_k": cu, MAX_LENGTH: longest, "max_length_k": longest}


@functools.cache
def choose(device_type: str, dtype: torch.dtype, head_dims: tuple[int, int] = (64, 64),
           dropout: bool = False) -> families.Kernel:
    """The kernel for padding-free rows of this device type and dtype (and the model's head widths,
    and whether its attention has dropout): probed once per process, at build time."""
    name = dtypes.name_of(dtype) or str(dtype)
    if device_type != "cuda":
        return families.varlen_kernel(device_type, name, flash_attn=False, torch_varlen=None, sdpa=None)
    return families.varlen_kernel(
        "cuda", name,
        flash_attn=_flash_attn_installed(),
        torch_varlen=None if dropout else contract.torch_varlen_form(),  # torch's varlen_attn has no dropout
        sdpa=_probe_sdpa(dtype, head_dims[0]))


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _probe_sdpa(dtype: torch.dtype, width: int) -> str | None:
    """Which fused SDPA call runs here, forward and backward, tried on the device: "gqa" (grouped
    heads as they are), "repeated" (only with key/value heads repeated), None (math only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]

    def runs(kv_heads: int) -> bool:
        q = torch.randn(1, 2, 16, width, device="cuda", dtype=dtype, requires_grad=True)
        kv = torch.randn(1, kv_heads, 16, width, device="cuda", dtype=dtype, requires_grad=True)
        try:
            with sdpa_kernel(fused):
                F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=kv_heads != 2).sum().backward()
        except RuntimeError:
            return False
        return True

    return "gqa" if runs(1) else "repeated" if runs(2) else None


def register(kernel: families.Kernel | None = None) -> str:
    """Make ``ft_varlen`` a name transformers accepts for ``attn_implementation``, running `kernel`
    (default: the CPU's). The kernel is bound into the function: a compiled layer sees a constant."""
    from transformers import AttentionInterface

    kernel = kernel or choose("cpu", torch.float32)
    AttentionInterface.register(NAME, functools.partial(varlen_sdpa, kernel=kernel.name, repeat_kv=kernel.repeat_kv))
    _registered[:] = [kernel]
    return NAME


def registered() -> families.Kernel | None:
    """The kernel `register` bound last."""
    return _registered[0] if _registered else None


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, sliding_window=None,
                softcap=None, s_aux=None, *, kernel: str = "sdpa_per_example", repeat_kv: bool = False, **kwargs):
    """(1, heads, tokens, dim) → (1, tokens, heads, dim), as transformers expects.

    `sliding_window` (transformers' convention: a query sees the `sliding_window` newest keys,
    itself included) is applied within each example.
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
    if kernel in ("flash_attn", "torch_varlen"):
        return _one_call(kernel, repeat_kv, query, key, value, cu, kwargs[MAX_LENGTH], dropout, scaling,
                         sliding_window), None
    return _per_example(query, key, value, cu, dropout, scaling, sliding_window, repeat_kv, kernel), None


def _one_call(kernel, repeat_kv, query, key, value, cu, longest, dropout, scaling, sliding_window):
    """One variable-length call over the row, in the (tokens, heads, dim) layout both kernels take."""
    _require_16bit_cuda(kernel, query)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if repeat_kv:
        k, v = _repeat_heads(k, v, q.shape[1], dim=1)
    value_dim = v.shape[-1]
    v = _pad_to(v, q.shape[-1])
    window = (sliding_window - 1, 0) if sliding_window else (-1, 0)
    if kernel == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, dropout_p=dropout, softmax_scale=scaling,
                                     causal=True, window_size=window)
    else:
        if dropout:
            raise ValueError(f"{NAME}: torch's varlen_attn has no dropout (trainer.attention.choose avoids it)")
        grouped = {} if repeat_kv else {"enable_gqa": True}
        out = _torch_varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling, window_size=window, **grouped)
    return out[None, ..., :value_dim]


def _require_16bit_cuda(kernel: str, query: torch.Tensor) -> None:
    if query.dtype not in (torch.bfloat16, torch.float16) or not query.is_cuda:
        raise ValueError(f"{NAME}: the {kernel} kernel was chosen for 16-bit CUDA queries, got {query.dtype} on "
                         f"{query.device}")


def _repeat_heads(key, value, heads: int, dim: int):
    """Key/value heads repeated to `heads`, each serving its query group (transformers' repeat_kv order)."""
    groups = heads // key.shape[dim]
    return key.repeat_interleave(groups, dim=dim), value.repeat_interleave(groups, dim=dim)


def _pad_to(value, width: int):
    """A narrower value head (MLA) padded to the query's width: the fused kernels take one width."""
    return value if value.shape[-1] == width else F.pad(value, (0, width - value.shape[-1]))


def _causal_mask(rows: torch.Tensor, cols: torch.Tensor, sliding_window) -> torch.Tensor:
    allowed = cols[None, :] <= rows[:, None]
    if sliding_window:
        allowed &= cols[None, :] > rows[:, None] - sliding_window
    return allowed


_lengths_read: list = [None, None]  # the boundaries of the micro batch being computed, and its lengths


def _lengths(cu: torch.Tensor) -> list[int]:
    """The examples' lengths on the host: read once per micro batch (every layer gets the same
    tensor), which on a GPU is one host sync per micro batch."""
    if _lengths_read[0] is not cu:
        _lengths_read[:] = [cu, cu.diff().tolist()]
    return _lengths_read[1]


def _backends(kernel: str, query: torch.Tensor):
    """On a GPU, the SDPA backends `kernel` stands for: fused ones only, or math when chosen."""
    if not query.is_cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kernel == "sdpa_math":
        return sdpa_kernel([SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION])


@torch.compiler.disable  # data-dependent split: run eagerly, and guard a compiled layer on nothing here
def _per_example(query, key, value, cu, dropout, scaling, sliding_window=None, repeat_kv=False,
                 kernel="sdpa_per_example"):
    lengths = _lengths(cu)
    value_dim = value.shape[-1]
    value = _pad_to(value, query.shape[-1])
    outputs = []
    with _backends(kernel, query):
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2)):
            mask = None
            if sliding_window and q.shape[2] > sliding_window:
                positions = torch.arange(q.shape[2], device=q.device)
                mask = _causal_mask(positions, positions, sliding_window)  # this example's [L, L] only
            if (repeat_kv or mask is not None) and k.shape[1] != q.shape[1]:
                k, v = _repeat_heads(k, v, q.shape[1], dim=1)  # no backend takes a mask with grouped heads
            outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                          is_causal=mask is None, scale=scaling,
                                                          enable_gqa=k.shape[1] != q.shape[1]))
    return torch.cat(outputs, 2)[..., :value_dim].transpose(1, 2).contiguous()
