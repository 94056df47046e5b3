"""Building the model: base weights (+ LoRA) on the device, sharded with FSDP2 when asked.

``build(job, env, device, tokenizer)`` returns a ``Built`` whose ``module`` (``loss.CausalLMLoss``)
maps a batch to the *summed* cross-entropy over answer tokens.

Every dtype, the NF4 storage of a frozen base, CPU offload and the gradient residency are
the policy's (``ftcore.policy.decide``): this module builds what the decision says, and
`ft plan` prices the same decision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ftcore import arch, contract, dtypes, families, policy
from ftcore.errors import UserError

from . import attention, meta_init, quantize, sharding
from .dist import DistEnv
from .hub import hf_token
from .lora import add_lora, compute_adapters_in_compute_dtype
from .loss import CausalLMLoss, use_liger
from .weights import random_model

DTYPES = {name: getattr(torch, attr) for name, attr in dtypes.TORCH.items()}  # ftcore.dtypes, as torch dtypes


@dataclass
class Built:
    module: nn.Module  # CausalLMLoss: the thing to train (sharded under FSDP2)
    lm: nn.Module  # the Hugging Face model (a PeftModel for LoRA)
    sharded: bool  # FSDP2: gradients are reduced by FSDP, state dicts are DTensors
    compute_dtype: torch.dtype
    decision: policy.Decision  # what was built
    attention: families.AttentionPath  # the attention implementation and the row layout collate uses
    kernel: families.Kernel | None = None  # what ft_varlen runs (None: the model's own attention)
    # DPO with full weights: a frozen copy of the base (a CausalLMLoss, sharded like `module`), never
    # trained or saved; None otherwise (LoRA's reference is `lm` with its adapters switched off).
    reference: nn.Module | None = None

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def model_config(job):
    from transformers import AutoConfig

    if job.model.init == "random":
        settings = dict(job.model.config)
        model_type = settings.pop("model_type", None)
        if not model_type:
            raise UserError("model.config needs `model_type` (e.g. llama) for model.init=random")
        try:
            return AutoConfig.for_model(model_type, **settings)
        except ValueError as e:
            raise UserError(f"model.config: {e}") from None
    config = AutoConfig.from_pretrained(job.model.path, token=hf_token(), trust_remote_code=job.model.trust_remote_code)
    arch.with_overrides(config.to_dict(), job.model.config, job.model.path)  # refuses another model_type
    for key, value in job.model.config.items():
        setattr(config, key, value)
    return config


def attention_path(job, config, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[families.AttentionPath, families.Kernel | None]:
    """The path the policy picks for this family (ftcore.families, which `ft plan` prints too):
    ft's padding-free attention where it is exact, the model's own (padded) where it is not; for
    ft_varlen, its kernel, chosen once for this device type and dtype and registered."""
    path = families.attention_path(job, config.to_dict())
    if path.name != attention.NAME:
        return path, None
    widths = families.head_dims({key: getattr(config, key, None) for key in families.HEAD_DIM_KEYS})
    kernel = attention.choose(torch.device(device).type, dtype, widths or (64, 64),
                              bool(getattr(config, "attention_dropout", 0.0)))
    attention.register(kernel)
    return path, kernel


def check_vocabulary(tokenizer, config) -> None:
    """Every id the tokenizer can produce has a row in the model's embedding. An id past the
    last row fails deep in the first forward (a device assert on a GPU); the count of tokens
    alone misses a vocabulary with gaps, so the largest id is checked too."""
    vocab = tokenizer.get_vocab()
    top = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    if top > config.vocab_size:
        largest = max(vocab, key=vocab.get) if vocab else "?"
        raise UserError(f"the tokenizer produces ids up to {top - 1} ({largest!r}) but the model's vocab_size is "
                        f"{config.vocab_size}: those tokens have no embedding",
                        hint="use the tokenizer that belongs to the model (model.tokenizer), or resize the "
                             "model's embeddings before training")


def check_loaded(path: str, loading: dict) -> None:
    """Stop where the checkpoint's weights are not the model's: transformers re-initialises a
    weight it did not find (MISSING) and drops one it has no place for (UNEXPECTED), then
    trains on, which is a different model from the one named."""
    problems = []
    for key, word in (("missing_keys", "MISSING (would be trained from random values)"),
                      ("unexpected_keys", "UNEXPECTED (in the checkpoint, not in the model: dropped)"),
                      ("mismatched_keys", "of another shape than the model's")):
        names = sorted(str(item[0] if isinstance(item, tuple) else item) for item in loading.get(key) or ())
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} weight(s) {word}: {shown}")
    if problems:
        raise UserError(f"{path}: its weights do not fit the model ft built from its config:", *problems,
                        hint="train the checkpoint with its own config.json (model.config only overrides what it "
                             "names), or use a checkpoint of this architecture")


def build(job, env: DistEnv, device: torch.device, tokenizer, base_dir: Path | None = None) -> Built:
    """Base model (+ LoRA), on `device`, sharded with FSDP2 when the strategy says so.

    `base_dir`: where rank 0 saves randomly initialised base weights before LoRA is added
    (random weights exist nowhere else, and an adapter is useless without its base).
    """
    decision = policy.decide(job)
    compute_dtype = DTYPES[decision.compute]
    # The base is loaded in the dtype it is stored in: the frozen dtype under LoRA (its
    # projections quantized below when the policy says NF4), the trained dtype under SFT.
    param_dtype = DTYPES[decision.frozen if decision.lora else decision.trained]
    config = model_config(job)
    check_vocabulary(tokenizer, config)
    path, kernel = attention_path(job, config, device, compute_dtype)
    if env.is_main:
        print(f"ft trainer: {path.describe()}", flush=True)
        if kernel is not None:
            print(f"ft trainer: {kernel.describe()}", flush=True)
    common = dict(contract.with_dtype(param_dtype), attn_implementation=path.name)

    lm = _base_model(job, config, decision, device, common)
    if base_dir is not None and env.is_main and not (base_dir / "config.json").exists():
        # (Meta-initialised weights are not here yet: draw the same ones again to save them.)
        _save_base(random_model(job, config, **common) if job.model.meta_init else lm, tokenizer, base_dir)
    reference = None
    if decision.reference is not None and not decision.lora:
        # Before anything changes the policy: the reference is the base as loaded, for good (a
        # resumed run loads the policy from its checkpoint, and this copy from the base again).
        reference = _frozen_copy(lm, DTYPES[decision.reference])
    if decision.activation_checkpointing:
        _checkpoint_activations(lm)
    fused_cross_entropy = use_liger(lm) if job.trainer.liger else None
    if reference is not None and job.trainer.liger:
        use_liger(reference.lm)  # the same kernels as the policy: equal at step 0, so the first loss is ln 2
    lm = _trainable(lm, job, decision)
    module = CausalLMLoss(lm, fused_cross_entropy)
    for part in (module, reference) if reference is not None else (module,):
        _place(part, job, env, device, decision)
    return Built(module=module, lm=lm, sharded=decision.sharded, compute_dtype=compute_dtype,
                 decision=decision, attention=path, kernel=kernel, reference=reference)


def _base_model(job, config, decision: policy.Decision, device: torch.device, common: dict) -> nn.Module:
    """The base weights: empty on the meta device (filled after sharding), a seeded random
    draw, or the pretrained files."""
    from transformers import AutoModelForCausalLM

    if job.model.meta_init:
        lm = meta_init.empty_model(config, **common)
    elif job.model.init == "random":
        lm = random_model(job, config, **common)
    else:
        extra = {}
        if decision.topology.on_gpu and not decision.sharded:
            extra["device_map"] = {"": device}  # straight to this GPU, not via host memory
        lm, loading = AutoModelForCausalLM.from_pretrained(
            job.model.path,
            config=config,
            token=hf_token(),
            trust_remote_code=job.model.trust_remote_code,
            output_loading_info=True,
            **common,
            **extra,
        )
        check_loaded(job.model.path, loading)
    lm.config.use_cache = False
    if getattr(lm, "loss_type", "") is None:  # a class name transformers' loss table does not know (GPT-2's)
        lm.loss_type = "ForCausalLM"  # what it falls back to anyway, without its warning on every run
    return lm


def _trainable(lm: nn.Module, job, decision: policy.Decision) -> nn.Module:
    """LoRA adapters in the policy's dtypes on a frozen base, or every weight trained (SFT)."""
    if not decision.lora:
        lm.requires_grad_(True)
        return lm
    lm = add_lora(lm, job)
    for param in lm.parameters():
        if param.requires_grad:  # the adapters (peft's default is fp32 too: this makes it the policy's)
            param.data = param.data.to(DTYPES[decision.trained])
    compute_adapters_in_compute_dtype(lm)  # the policy's adapter_compute, on every strategy
    return lm


def _place(module: nn.Module, job, env: DistEnv, device: torch.device, decision: policy.Decision) -> None:
    """Quantize and compile the decoder layers, then shard them with FSDP2 or move the model
    to `device`."""
    if decision.quantization:
        # Before sharding, so FSDP2 splits (and all-gathers) the 4-bit form; on the meta
        # device this shapes placeholders that meta_init fills.
        quantize.quantize_(sharding.decoder_layers(module.causal_lm), decision)
    if job.trainer.compile:
        # Before sharding, as torchtitan does: FSDP2's hooks stay outside the compiled code.
        # Without fullgraph a break splits a layer silently: `graph_breaks` reports them.
        from torch._dynamo.utils import counters

        counters.clear()
        for layer in sharding.decoder_layers(module.causal_lm):
            layer.compile()
    if decision.sharded:
        sharding.shard(module, env, device, decision)
        if job.model.meta_init:
            meta_init.materialize(module, job, env, device, decision)
    else:
        module.to(device)


def _frozen_copy(lm: nn.Module, dtype: torch.dtype) -> CausalLMLoss:
    """DPO's reference for full weights: a copy of the base, frozen, in eval mode (no dropout), stored
    in the compute dtype (`ft plan` prices it: `ftcore.policy.Decision.reference`)."""
    import copy

    reference = copy.deepcopy(lm).to(dtype)  # (on the meta device too: meta_init fills it in this dtype)
    reference.requires_grad_(False)
    reference.eval()
    return CausalLMLoss(reference)


def graph_breaks() -> str:
    """What torch.compile split the decoder layers at so far (read after the first step has
    run them): each break is a return to eager Python between two compiled graphs, which
    compile=true was meant to avoid. NF4 weights (model.quantization) break at every
    projection; the per-example attention kernels (CPUs, GPUs without a variable-length kernel)
    at every layer."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    graphs = counters["stats"]["unique_graphs"]
    if not breaks:
        return f"compile: {graphs} graph(s), no graph breaks"
    reasons = "; ".join(f"{count}× {reason.splitlines()[0].strip()}" for reason, count in breaks.most_common(3))
    return (f"compile: {sum(breaks.values())} graph break(s) in the decoder layers ({graphs} graphs): {reasons}. "
            "Each returns to eager Python mid-layer; measure before relying on compile (docs/benchmarks.md)")


def _checkpoint_activations(lm: nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works under FSDP2 and peft)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers 5
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _save_base(lm: nn.Module, tokenizer, base_dir: Path) -> None:
    import shutil

    tmp = base_dir.with_name(f".tmp-{base_dir.name}")
    for leftover in (tmp, base_dir):  # from a job killed while saving
        shutil.rmtree(leftover, ignore_errors=True)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.rename(tmp, base_dir)  # config.json appears only once the weights are complete
