"""LoRA: which layers get adapters (rules: ftcore.policy, family names: ftcore.families), adding
them with peft, and the dtype the adapters compute in (rule: ftcore.policy, `Decision.adapter_compute`).

Linear layers are `nn.Linear` and GPT-2's `Conv1D` (peft adapts both). MoE experts stored as
one 3-D parameter per layer (transformers 5: Mixtral, Qwen3-MoE, gpt-oss, DeepSeek-V3,
Qwen3-Next) are adapted through peft's `target_parameters`; the saved adapter_config.json
lists them there, and `PeftModel.from_pretrained` loads them back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ftcore import contract, policy
from ftcore.errors import UserError


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer LoRA can adapt as a linear map, by name: nn.Linear and transformers' Conv1D."""
    from transformers.pytorch_utils import Conv1D

    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def lora_targets(model: nn.Module, cfg) -> list[str]:
    """The explicit list of linear-layer names the `peft` section adapts (rule: ftcore.policy)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = linear_layers(model)
    head_name = next((n for n, m in linears.items() if m is head), None)
    return policy.lora_targets(list(linears), head_name, cfg, model_type(model))


def expert_targets(model: nn.Module, cfg) -> list[str]:
    """The 3-D expert parameters the `peft` section adapts (peft's `target_parameters`)."""
    names = [n for n, p in model.named_parameters() if p.dim() == 3]
    return policy.expert_targets(names, cfg, model_type(model))


def add_lora(lm: nn.Module, job) -> nn.Module:
    """Wrap `lm` in a PeftModel with fresh adapters, drawn by peft from `trainer.seed`; freezes the base."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(lm, job.peft)
    experts = expert_targets(lm, job.peft)
    if experts and job.peft.method == "dora":
        raise UserError(f"peft.method=dora adapts linear layers only, and this model keeps its MoE experts as 3-D "
                        f"weights ({experts[0]}, ...): set peft.experts=false to adapt the rest with DoRA")
    extra = {}
    if experts:
        if not contract.peft_adapts_parameters():
            raise UserError(f"this model keeps its MoE experts as 3-D weights ({experts[0]}, ...), which peft "
                            f"{contract.dist_version('peft')} cannot adapt (peft 0.17 added target_parameters)",
                            hint="set peft.experts=false to adapt the attention and MLP projections only, "
                                 "or use an image with peft>=0.17")
        extra["target_parameters"] = experts
    if job.peft.method == "dora":
        extra["use_dora"] = True
    from transformers.pytorch_utils import Conv1D

    layers = linear_layers(lm)
    if targets and all(isinstance(layers.get(name), Conv1D) for name in targets):
        extra["fan_in_fan_out"] = True  # GPT-2's Conv1D stores in × out (peft would set it, with a warning)
    config = LoraConfig(
        r=job.peft.dim,
        lora_alpha=job.peft.alpha,
        lora_dropout=job.peft.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        **extra,
    )
    torch.manual_seed(job.trainer.seed)  # identical adapters on every rank
    adapted = get_peft_model(lm, config)
    # peft may rewrite targets (its transformers 4 → 5 conversion of MoE names): what it did not
    # adapt would be trained as frozen without a word, and priced by the plan as adapted.
    missed = sorted(set(targets) - set(adapted.base_model.targeted_module_names))
    if missed:
        raise UserError(f"peft {contract.dist_version('peft')} did not adapt {len(missed)} of the {len(targets)} "
                        f"layers ft asked for ({missed[0]}, ...)",
                        hint="name other layers in peft.target_modules, or exclude these with peft.exclude_modules")
    return adapted


class ComputeDtypeLinear(nn.Linear):
    """A LoRA A or B matrix that keeps its fp32 weight (what the optimizer updates) and computes
    in its input's dtype, the compute dtype: the weight is cast per matmul, as FSDP2's mixed
    precision casts it per all-gather. The cast's backward hands the gradient back in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def compute_adapters_in_compute_dtype(lm: nn.Module) -> int:
    """Make every LoRA layer of `lm` run its adapters in the compute dtype (the layer's input
    dtype) instead of peft's default for fp32 adapters on a bf16 base, which copies each adapted
    layer's input to fp32 and keeps the copy for backward. Under FSDP2 the gathered weights are
    already in the compute dtype, so both strategies compute alike. Returns the layers changed."""
    from peft.tuners.lora import Linear as LoraLinear  # an adapted nn.Linear or Conv1D (not a 3-D expert weight)

    changed = 0
    for module in lm.modules():
        if not isinstance(module, LoraLinear):
            continue
        module.cast_input_dtype_enabled = False  # peft's own switch (peft.helpers.disable_input_dtype_casting)
        for linear in (*module.lora_A.values(), *module.lora_B.values()):
            if type(linear) is nn.Linear:
                linear.__class__ = ComputeDtypeLinear
                changed += 1
    return changed
