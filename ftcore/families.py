"""Model families: what each architecture is, which attention path trains it exactly, what LoRA adapts.

    family = families.get("gpt2")                  # None for a model_type ft does not know
    family.targets, family.experts                 # default LoRA targets; 3-D expert weights
    path = families.attention_path(job, config)    # config: the model's config.json as a dict
    families.problems(job, config)                 # why this job cannot train this model
    families.varlen_kernel(\"cuda\", \"bf16\", flash_attn=False, torch_varlen=\"heads\", sdpa=\"gqa\")  # ft_varlen's kernel

The one owner of these facts (torch-free): the trainer builds the path and adapts the targets,
the planner prices the same, `ft submit` refuses what `problems` lists. Each family's tensors
are `ftcore.arch.SHAPES`' (same keys). Why each path is exact where it is chosen, and what
peft will not adapt: docs/families.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VARLEN = "ft_varlen"

LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
MOE_EXPERTS = ("gate_up_proj", "down_proj")
# peft's transformers-4 names of the experts and router in Qwen2-MoE-like families
# (peft/utils/transformers_weight_conversion.py, _MOE_TARGET_MODULE_MAPPING["qwen2_moe"]).
PEFT_QWEN2_MOE_NAMES = ("gate_proj", "up_proj", "down_proj", "gate")


@dataclass(frozen=True)
class Family:
    """One architecture as transformers implements it (its `model_type`)."""

    model_type: str
    name: str  # as people call it, for logs and the README
    attention: tuple[str, ...] = LLAMA_ATTENTION  # LoRA default: attention projections, as named here
    mlp: tuple[str, ...] = LLAMA_MLP  # LoRA default: MLP projections (dense layers, shared experts)
    experts: tuple[str, ...] = ()  # 3-D expert parameters (`mlp.experts.<name>`), adapted with target_parameters
    varlen: bool = True  # passes the example boundaries down to attention: ft_varlen can run it
    softcap: bool = False  # attention-logit soft-capping (config `attn_logit_softcapping`)
    sinks: bool = False  # learned attention sinks
    linear_attention: bool = False  # some layers are linear attention (config `layer_types`)
    own: str = "sdpa"  # the model's own attention implementation that honours all of the above
    peft_unreachable: tuple[str, ...] = ()  # layer names peft turns into expert targets (docs/families.md)
    note: str = ""  # what else is special, for the README

    @property
    def targets(self) -> tuple[str, ...]:
        """The default LoRA targets: attention, then MLP projections (a name both use, once)."""
        return self.attention + tuple(m for m in self.mlp if m not in self.attention)


def _f(model_type: str, name: str, **kw: Any) -> Family:
    return Family(model_type, name, **kw)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    _f("llama", "Llama"),
    _f("mistral", "Mistral", note="sliding window (config sliding_window)"),
    _f("qwen2", "Qwen2 / Qwen2.5", note="q/k/v biases; optional sliding window"),
    _f("qwen3", "Qwen3", note="q/k norms"),
    _f("qwen3_moe", "Qwen3-MoE", experts=MOE_EXPERTS, peft_unreachable=PEFT_QWEN2_MOE_NAMES,
       note="MoE: 3-D experts; dense MLP layers not adapted (peft reads their names as the experts')"),
    _f("mixtral", "Mixtral", experts=MOE_EXPERTS, note="MoE: 3-D experts; sliding window"),
    _f("gemma", "Gemma"),
    _f("gemma2", "Gemma 2", varlen=False, softcap=True, own="eager",
       note="attention-logit soft-capping: eager attention only (transformers refuses sdpa)"),
    _f("gemma3_text", "Gemma 3 (text)", note="sliding-window layers"),
    _f("phi3", "Phi-3", attention=("qkv_proj", "o_proj"), mlp=("gate_up_proj", "down_proj"),
       note="fused qkv and gate/up projections"),
    _f("phi", "Phi-2", attention=("q_proj", "k_proj", "v_proj", "dense"), mlp=("fc1", "fc2"),
       note="partial rotary (the model's own); output projection `dense`, MLP fc1/fc2"),
    _f("olmo2", "OLMo 2"),
    _f("granite", "Granite", note="scaled embeddings, residuals and logits"),
    _f("cohere", "Cohere (Command-R)", note="parallel attention/MLP, logit scale"),
    _f("smollm3", "SmolLM3", note="no rotary on some layers (the model's own)"),
    _f("stablelm", "StableLM", varlen=False,
       note="does not pass the example boundaries to attention: padded"),
    _f("gpt_neox", "GPT-NeoX (Pythia)", attention=("query_key_value", "dense"),
       mlp=("dense_h_to_4h", "dense_4h_to_h"), note="fused qkv; partial rotary (the model's own)"),
    _f("gpt2", "GPT-2", attention=("c_attn", "c_proj"), mlp=("c_fc",),
       note="Conv1D layers (peft adapts them); `c_proj` names both attention and MLP outputs"),
    _f("falcon", "Falcon", attention=("query_key_value", "dense"), mlp=("dense_h_to_4h", "dense_4h_to_h"),
       varlen=False, note="fused qkv; does not pass the example boundaries to attention: padded"),
    _f("gpt_oss", "gpt-oss", experts=MOE_EXPERTS, sinks=True, varlen=False, own="eager",
       note="attention sinks: eager attention only; MoE: 3-D experts; sliding-window layers"),
    _f("deepseek_v3", "DeepSeek-V3", attention=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
       experts=MOE_EXPERTS, peft_unreachable=PEFT_QWEN2_MOE_NAMES,
       note="MLA (low-rank q and kv projections); MoE: 3-D experts; dense MLP layers and shared experts "
            "not adapted (peft reads their names as the experts')"),
    _f("qwen3_next", "Qwen3-Next", attention=LLAMA_ATTENTION + ("in_proj_qkvz", "in_proj_ba", "out_proj"),
       experts=MOE_EXPERTS, varlen=False, linear_attention=True, peft_unreachable=PEFT_QWEN2_MOE_NAMES,
       note="linear-attention layers (gated delta rule): padded, no packing; shared experts not adapted "
            "(peft reads their names as the experts')"),
)}


def get(model_type: str | None) -> Family | None:
    """The family of `model_type` (None: ft does not know it)."""
    return FAMILIES.get(model_type or "")


def adapts_experts(peft) -> bool:
    """Whether a `peft` section adapts MoE experts: `peft.experts`, or when unset, whenever the
    family's defaults or every linear layer are adapted (not when target_modules lists layers)."""
    if peft.experts is not None:
        return peft.experts
    return peft.target_modules is None or peft.match_all_linear


# --- which attention path a job runs --------------------------------------------------------------


@dataclass(frozen=True)
class AttentionPath:
    """What the trainer builds the model with, and how it lays out a micro batch."""

    name: str  # attn_implementation given to transformers: "ft_varlen", "sdpa", "eager", "flash_attention_2"
    padding_free: bool  # one row per micro batch (ft_varlen) or padded rows
    packing: bool  # packed rows are exact on this path
    reason: str  # why, one line (the trainer's log, `ft plan`)

    def describe(self) -> str:
        layout = "padding-free rows" if self.padding_free else "padded rows"
        return f"attention: {self.name}, {layout} ({self.reason})"


def _model_type(job, config: dict | None) -> str | None:
    if config and config.get("model_type"):
        return str(config["model_type"])
    return (job.model.config or {}).get("model_type")


def _window(config: dict | None) -> int | None:
    """The sliding window the model applies, or None when it attends to everything."""
    config = config or {}
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return None
    layer_types = config.get("layer_types")
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return int(window)


def attention_path(job, config: dict | None) -> AttentionPath:
    """The path for `job` on the model whose config.json is `config` (None: not readable here,
    then the model_type of `model.config`, if any, decides)."""
    merged = {**(config or {}), **(job.model.config or {})}
    model_type = _model_type(job, merged)
    family = get(model_type)
    asked = job.model.attn_implementation
    window = _window(merged)
    packing_ok = True
    why_packing = ""
    if family is None:
        return AttentionPath(asked, False, window is None or window >= job.data.max_seq_length,
                             f"{model_type or 'this model'} is not a family ft knows: the model's own attention")
    if family.linear_attention:
        packing_ok = False
    if asked == "eager" or not job.data.padding_free:
        name = "eager" if asked == "eager" or family.own == "eager" else asked
        why = "model.attn_implementation=eager" if asked == "eager" else "data.padding_free=false"
        if window is not None and window < job.data.max_seq_length:
            packing_ok = False
        return AttentionPath(name, False, packing_ok, why)
    if family.varlen:
        return AttentionPath(VARLEN, True, packing_ok, f"exact for {family.name}")
    if family.softcap:
        why_packing = "attention-logit soft-capping"
    elif family.sinks:
        why_packing = "attention sinks"
    elif family.linear_attention:
        why_packing = "linear-attention layers"
    else:
        why_packing = "the model does not pass example boundaries to attention"
    name = family.own if asked == "sdpa" else asked
    if window is not None and window < job.data.max_seq_length:
        packing_ok = False
    return AttentionPath(name, False, packing_ok, f"{family.name}: {why_packing}, so the model's own "
                                                  f"{name} attention with padding")


# --- which kernel runs ft_varlen ------------------------------------------------------------------
# The rationale and the table per torch release: docs/architecture.md, "The padding-free kernel".

FLASH_SDPA_MAX_HEAD_DIM = 256  # SDPA's flash backend (check_head_dim_size_flash)
SCORE_BYTES = 4  # SDPA's math backend keeps fp32 scores: one [heads, L, L] tensor per example and layer


@dataclass(frozen=True)
class Kernel:
    """The kernel ft's padding-free attention runs, chosen once per build (trainer/attention.py)."""

    name: str  # "flash_attn", "torch_varlen", "sdpa_per_example" or "sdpa_math"
    repeat_kv: bool  # key/value heads copied to the query heads first (the kernel takes no grouped heads)
    why: str

    @property
    def fused(self) -> bool:
        """False: SDPA's math backend, whose [heads, L, L] scores `ft plan` prices."""
        return self.name != "sdpa_math"

    @property
    def one_call(self) -> bool:
        """One variable-length call per row: no host sync, nothing to break a compiled layer."""
        return self.name in ("flash_attn", "torch_varlen")

    def describe(self) -> str:
        heads = ", key/value heads repeated to the query heads" if self.repeat_kv else ""
        return f"attention kernel: {self.name}{heads} ({self.why})"


HEAD_DIM_KEYS = ("head_dim", "hidden_size", "num_attention_heads", "qk_nope_head_dim", "qk_rope_head_dim",
                 "v_head_dim")


def head_dims(config: dict) -> tuple[int, int] | None:
    """(query/key, value) head widths from a config.json (MLA's differ); None when it does not say."""
    if config.get("qk_nope_head_dim") is not None:
        qk = int(config["qk_nope_head_dim"]) + int(config.get("qk_rope_head_dim") or 0)
        return qk, int(config.get("v_head_dim") or qk)
    if config.get("head_dim"):
        return int(config["head_dim"]), int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        width = int(config["hidden_size"]) // int(config["num_attention_heads"])
        return width, width
    return None


def sdpa_fused(dtype: str, qk_dim: int) -> str | None:
    """Which fused SDPA backend a CUDA call per example can use, by shape and dtype alone:
    "gqa" (flash: 16-bit, head ≤ 256, grouped heads taken as they are), "repeated" (memory-
    efficient: any dtype, head a multiple of its alignment, but equal head counts), None
    (only the math backend). ft pads a narrower value head to the query's (MLA)."""
    half = dtype in ("bf16", "fp16")
    if half and qk_dim <= FLASH_SDPA_MAX_HEAD_DIM:
        return "gqa"
    if qk_dim % (8 if half else 4) == 0:
        return "repeated"
    return None


def varlen_kernel(device: str, dtype: str, *, flash_attn: bool, torch_varlen: str | None,
                  sdpa: str | None) -> Kernel:
    """The kernel for padding-free rows on `device` ("cuda", "cpu") in `dtype` ("bf16"...), from
    what the environment has: flash-attn installed, torch's varlen_attn ("gqa": it takes
    enable_gqa; "heads": only equal head counts; None: absent or without window_size/scale),
    and `sdpa_fused`'s answer (the trainer probes it on the device; `ft plan` reads the shape)."""
    if device != "cuda":
        return Kernel("sdpa_per_example", False, "SDPA per example; the lengths are read on the host, free here")
    if dtype in ("bf16", "fp16"):
        if flash_attn:
            return Kernel("flash_attn", False, "flash-attn's flash_attn_varlen_func, one call per row")
        if torch_varlen:
            return Kernel("torch_varlen", torch_varlen != "gqa", "torch's varlen_attn, one call per row"
                          + ("" if torch_varlen == "gqa" else "; this torch's has no enable_gqa"))
    if sdpa:
        backend = "flash" if sdpa == "gqa" else "memory-efficient"
        return Kernel("sdpa_per_example", sdpa != "gqa",
                      f"no variable-length kernel here: SDPA's {backend} backend per example, causal, no mask; "
                      "the lengths cost one host sync per micro batch")
    return Kernel("sdpa_math", False, "no fused kernel takes this dtype and head size: SDPA's math backend per "
                  "example, fp32 [heads, L, L] scores kept per layer (priced by ft plan)")


def problems(job, config: dict | None) -> list[str]:
    """Why `job` cannot train this model exactly: each a reason and the setting to change."""
    merged = {**(config or {}), **(job.model.config or {})}
    model_type = _model_type(job, merged)
    family = get(model_type)
    found = []
    path = attention_path(job, config)
    if job.data.packing and not path.packing:
        if family is not None and family.linear_attention:
            why = f"{family.name} has linear-attention layers, whose state would flow across packed examples"
        else:
            why = (f"the model's sliding window ({_window(merged)} tokens) is shorter than a packed row "
                   f"(data.max_seq_length={job.data.max_seq_length}) and ft's block mask on the {path.name} "
                   "path would replace it")
        found.append(f"data.packing=true: {why}. Set data.packing=false")
    if family is not None and job.model.attn_implementation == "flash_attention_2" and family.sinks:
        found.append(f"model.attn_implementation=flash_attention_2: {family.name}'s attention sinks need "
                     "the eager path. Set model.attn_implementation=sdpa (ft then uses eager)")
    peft = job.peft
    if peft is not None and adapts_experts(peft) and family is not None and family.experts and peft.dropout:
        found.append(f"peft.dropout={peft.dropout}: LoRA on {family.name}'s 3-D expert weights (peft "
                     "target_parameters) cannot apply dropout. Set peft.dropout=0 or peft.experts=false")
    return found
