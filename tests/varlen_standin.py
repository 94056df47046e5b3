"""A stand-in for torch's `torch.nn.attention.varlen.varlen_attn`, whose kernel runs on CUDA only.

Two signatures, each as torch has it (docs/architecture.md cites them): torch 2.11's, without
`enable_gqa`, refusing key/value heads fewer than the query's (its documented shapes are
(T, H, D) for all three), and torch 2.12's, with `enable_gqa` and its two head checks. Both take
the cumulative lengths as int32, one head width for query, key and value (the flash kernel's
rule), and flash's window convention: (left, right), -1 unbounded. Like torch's, the work is one
custom op, opaque to torch.compile (a compiled layer that calls it has nothing to break on);
it computes each example's attention in fp64 on the host, for forward passes only.
"""

from __future__ import annotations

import torch

CALLS: list[dict] = []


@torch.library.custom_op("ft_test::varlen_attn_standin", mutates_args=())
def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor, max_q: int,
            scale: float, left: int, right: int) -> torch.Tensor:
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    bounds = cu_seq_q.tolist()
    if max(b - a for a, b in zip(bounds, bounds[1:])) > max_q:
        raise RuntimeError("max_q is shorter than an example")
    out = torch.empty_like(query)
    for start, stop in zip(bounds, bounds[1:]):
        q, k, v = (t[start:stop].transpose(0, 1).double() for t in (query, key, value))
        scores = q @ k.transpose(1, 2) * scale
        rows = torch.arange(stop - start)[:, None]
        cols = torch.arange(stop - start)[None, :]
        allowed = cols <= rows + right if right >= 0 else torch.ones(stop - start, stop - start, dtype=torch.bool)
        if left >= 0:
            allowed &= cols >= rows - left
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out[start:stop] = (weights @ v).transpose(0, 1).to(query.dtype)
    return out


@_attend.register_fake
def _(query, key, value, cu_seq_q, max_q, scale, left, right):
    return torch.empty_like(query)


def _check(query, key, value, cu_seq_q, cu_seq_k, window_size):
    if not (query.dim() == key.dim() == value.dim() == 3):
        raise ValueError("query, key and value are (tokens, heads, dim)")
    if not query.shape[-1] == key.shape[-1] == value.shape[-1]:
        raise RuntimeError("the flash kernel takes one head width for query, key and value")
    if cu_seq_q.dtype != torch.int32 or cu_seq_k.dtype != torch.int32:
        raise RuntimeError("cu_seq_q and cu_seq_k must be int32")
    if len(window_size) != 2:
        raise ValueError(f"window_size must have length 2, got {len(window_size)}")


def varlen_attn_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1)):
    _check(query, key, value, cu_seq_q, cu_seq_k, window_size)
    if key.shape[1] != query.shape[1] or value.shape[1] != query.shape[1]:
        raise ValueError("torch 2.11's varlen_attn takes (T, H, D) query, key and value: the same heads")
    CALLS.append({"heads": (query.shape[1], key.shape[1]), "window_size": tuple(window_size)})
    return _attend(query, key, value, cu_seq_q, max_q, scale or query.shape[-1] ** -0.5, *window_size)


def varlen_attn_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    _check(query, key, value, cu_seq_q, cu_seq_k, window_size)
    heads_q, heads_k = query.shape[1], key.shape[1]
    if not enable_gqa and heads_q != heads_k:
        raise ValueError(f"Expect query and key/value to have the same number of heads but got Hq={heads_q} and "
                         f"Hkv={heads_k}. Try setting enable_gqa=True for GQA.")
    if enable_gqa and heads_q % heads_k != 0:
        raise ValueError("Expect number of query heads to be a multiple of kv heads for GQA")
    CALLS.append({"heads": (heads_q, heads_k), "window_size": tuple(window_size)})
    return _attend(query, key, value, cu_seq_q, max_q, scale or query.shape[-1] ** -0.5, *window_size)
