"""The loss the model is trained on: summed cross-entropy over answer tokens.

The loop divides by the global number of answer tokens, so the loss does not depend on how
the global batch is split. For preference tuning the same module returns each sequence's summed
answer log-probabilities instead (`sequence_index` in the batch), which `trainer.objectives`
turns into DPO's or ORPO's loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ftcore import policy

from .samples import IGNORE_INDEX


class CausalLMLoss(nn.Module):
    """Sum of next-token cross-entropy over answer positions.

    Calls the decoder and the output head itself instead of the model's forward, so that
    the head (the largest activation for big vocabularies) only sees hidden states at
    positions that carry loss. Being the root module also lets FSDP2 and data parallelism
    treat this as the model.
    """

    def __init__(self, lm: nn.Module, fused_cross_entropy=None):
        super().__init__()
        self.lm = lm
        self.fused_cross_entropy = fused_cross_entropy  # Liger's (`liger_cross_entropy`), or None

    @property
    def causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, answer_positions=None,
                reference: bool = False, sequence_index=None, sequence_tokens=None, **boundaries) -> torch.Tensor:
        """`answer_positions`: `collate.answer_positions(labels)`, computed on the host.
        `boundaries`: a padding-free row's (`attention.boundaries`).

        `reference=True` returns the model's own forward loss instead, summed like ours (the
        start-up check; it goes through this module so that FSDP2 gathers the weights).
        `sequence_index` (the sequence of each answer position, `collate.sequence_index`): the
        summed answer log-probabilities of each sequence instead, a vector as long as
        `sequence_tokens` (each sequence's answer-token count).
        """
        causal = self.causal_lm
        if reference:
            out = causal(input_ids=input_ids, labels=labels, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False, **boundaries)
            return out.loss * (labels[:, 1:] != IGNORE_INDEX).sum()
        hidden = causal.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **boundaries
        ).last_hidden_state
        if answer_positions is None:  # callers outside the training loop; this costs a host sync
            answer_positions = (labels[:, 1:] != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)
        # The head only sees positions that carry loss (often a small share of all tokens). The
        # positions are known on the host, so this gather has a known size: no host sync.
        hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, answer_positions)
        targets = labels[:, 1:].reshape(-1).index_select(0, answer_positions)
        if sequence_index is not None:
            token_logps = answer_log_probs(causal.get_output_embeddings(), hidden, targets, causal.config)
            return token_logps.new_zeros(sequence_tokens.shape[0]).index_add(0, sequence_index, token_logps)
        return answer_cross_entropy(causal.get_output_embeddings(), hidden, targets, causal.config,
                                    self.fused_cross_entropy)


def logit_scale(config) -> float:
    """The factor some architectures apply to the head's output: Cohere's `logit_scale`,
    Granite's `1 / logits_scaling`. Others ft does not know are caught by the start-up check
    against the model's own loss (`trainer.train`)."""
    scale = getattr(config, "logit_scale", None) or 1.0
    divisor = getattr(config, "logits_scaling", None) or 1.0
    return float(scale) / float(divisor)


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    logits = head(hidden)
    if scale != 1.0:
        logits = logits * scale
    logits = logits.float()
    if softcap:  # Gemma-2 style final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def _token_logps(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float,
                 softcap: float | None) -> torch.Tensor:
    logits = head(hidden)
    if scale != 1.0:
        logits = logits * scale
    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -F.cross_entropy(logits, targets, reduction="none")


def answer_log_probs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, config) -> torch.Tensor:
    """log p(target) at each answer position, in fp32; in checkpointed chunks like the loss."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = logit_scale(config)
    if hidden.shape[0] <= policy.LOSS_CHUNK_TOKENS:
        return _token_logps(head, hidden, targets, scale, softcap)
    return torch.cat([
        torch.utils.checkpoint.checkpoint(_token_logps, head, h, t, scale, softcap, use_reentrant=False)
        for h, t in zip(hidden.split(policy.LOSS_CHUNK_TOKENS), targets.split(policy.LOSS_CHUNK_TOKENS))
    ])


def answer_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, config, fused=None) -> torch.Tensor:
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = logit_scale(config)
    if fused is not None and not softcap and type(head) is nn.Linear:  # (a LoRA-adapted head is not)
        return fused(head, hidden, targets, scale)
    if hidden.shape[0] <= policy.LOSS_CHUNK_TOKENS:
        return _ce_sum(head, hidden, targets, scale, softcap)
    # Recomputing each chunk's logits in backward costs one more head matmul over answer
    # tokens and saves storing all of them.
    return sum(
        torch.utils.checkpoint.checkpoint(_ce_sum, head, h, t, scale, softcap, use_reentrant=False)
        for h, t in zip(hidden.split(policy.LOSS_CHUNK_TOKENS), targets.split(policy.LOSS_CHUNK_TOKENS))
    )


def use_liger(lm: nn.Module):
    """Patch `lm` (a transformers model, before LoRA) with Liger's kernels; return Liger's fused
    linear cross-entropy (it never materialises the logits) for `CausalLMLoss`. Needs the
    liger-kernel package and CUDA."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=lm, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
        weight = head.weight if scale == 1.0 else head.weight * scale
        bias = getattr(head, "bias", None)
        return fused(weight, hidden, targets, bias if scale == 1.0 or bias is None else bias * scale)

    return loss
