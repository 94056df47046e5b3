"""Padding-free attention: a micro batch as one row of its examples laid end to end.

``data.padding_free`` (the default) collates a micro batch into a single row and passes the
examples' lengths along (``ft_seq_lens``). Every linear layer then sees real tokens only,
no padding, and attention runs once per example with PyTorch's causal SDPA, whose flash
kernels skip the masked upper triangle. Nothing attends across examples; position ids
restart per example, so the hidden states equal the padded layout's up to rounding (tested).

It is registered with transformers as the attention implementation ``ft_varlen``. That
name lives on the in-memory config only: transformers does not write it to config.json,
so checkpoints load with the usual ``sdpa``. With flash-attention installed
(``model.attn_implementation=flash_attention_2``) transformers' own varlen path reads the
example boundaries from the position ids instead, and this module is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "ft_varlen"
SEQ_LENS = "ft_seq_lens"  # the keyword the forward pass carries down to every attention call


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """(batch, heads, tokens, dim) → (batch, tokens, heads, dim), as transformers expects."""
    seq_lens = kwargs.get(SEQ_LENS)
    if seq_lens is None:  # an ordinary padded batch: transformers' own sdpa path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: a padding-free batch is one row, got {query.shape[0]}")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    outputs = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
        for q, k, v in zip(query.split(seq_lens, 2), key.split(seq_lens, 2), value.split(seq_lens, 2))
    ]
    return torch.cat(outputs, 2).transpose(1, 2).contiguous(), None


def varlen_mask(*args, **kwargs):
    """No mask for a padding-free row (causality is per example, in `varlen_sdpa`); sdpa's
    usual mask for anything else."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("batch_size") == 1 and kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Make ``ft_varlen`` a name transformers accepts for ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_sdpa)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
