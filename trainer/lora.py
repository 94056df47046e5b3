"""LoRA: which linear layers get adapters (rule: ftcore.policy), and adding them with peft."""

from __future__ import annotations

import torch
import torch.nn as nn

from ftcore import policy


def lora_targets(model: nn.Module, cfg) -> list[str]:
    """The explicit list of linear-layer names the `peft` globs adapt (rule: ftcore.policy)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    head_name = next((n for n, m in linears.items() if m is head), None)
    return policy.lora_targets(list(linears), head_name, cfg)


def add_lora(lm: nn.Module, job) -> nn.Module:
    """Wrap `lm` in a PeftModel with fresh adapters, drawn by peft from `trainer.seed`; freezes the base."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(lm, job.peft)
    config = LoraConfig(
        r=job.peft.dim,
        lora_alpha=job.peft.alpha,
        lora_dropout=job.peft.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(job.trainer.seed)  # identical adapters on every rank
    return get_peft_model(lm, config)
