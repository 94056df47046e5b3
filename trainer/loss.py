"""The loss the model is trained on: summed cross-entropy over answer tokens.

The loop divides by the global number of answer tokens, so the loss does not depend on how
the global batch is split.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ftcore import policy

from . import attention
from .samples import IGNORE_INDEX


class CausalLMLoss(nn.Module):
    """Sum of next-token cross-entropy over answer positions.

    Calls the decoder and the output head itself instead of the model's forward, so that
    the head (the largest activation for big vocabularies) only sees hidden states at
    positions that carry loss. Being the root module also lets FSDP2 and data parallelism
    treat this as the model.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, seq_lens=None) -> torch.Tensor:
        causal = self.causal_lm
        extra = {} if seq_lens is None else {attention.SEQ_LENS: seq_lens}  # padding-free row
        hidden = causal.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        # Boolean indexing is a host sync on GPU; it buys a vocabulary projection over
        # answer tokens only (often a small fraction of all tokens).
        hidden = hidden[:, :-1][keep]
        return answer_cross_entropy(causal.get_output_embeddings(), hidden, targets[keep], causal.config)


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:  # Gemma-2 style final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def answer_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, config) -> torch.Tensor:
    softcap = getattr(config, "final_logit_softcapping", None)
    if hidden.shape[0] <= policy.LOSS_CHUNK_TOKENS:
        return _ce_sum(head, hidden, targets, softcap)
    # Recomputing each chunk's logits in backward costs one more head matmul over answer
    # tokens and saves storing all of them.
    return sum(
        torch.utils.checkpoint.checkpoint(_ce_sum, head, h, t, softcap, use_reentrant=False)
        for h, t in zip(hidden.split(policy.LOSS_CHUNK_TOKENS), targets.split(policy.LOSS_CHUNK_TOKENS))
    )
