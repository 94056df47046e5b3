"""The shape of a model from its `config.json` alone, without torch: what `ft plan` prices.

    dims = arch.dims_from_config(json.load(open("config.json")), "config.json")
    dims.params, dims.tensors(), dims.linear_names(), dims.experts()

`SHAPES` has one entry per family of `ftcore.families.FAMILIES` (same keys, held equal by
tests/ftcore/test_policy.py), each building the tensors as the family's modeling file does;
tests/launcher/test_arch.py holds them to the models transformers builds. An unknown
`model_type` is priced as a Llama-shaped decoder, marked inexact and unnamed (`Dims.exact`,
`Dims.named`). What a family *is* (LoRA targets, attention) is `ftcore.families`' to say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

HEAD = "lm_head"


class Tensor(NamedTuple):
    """One parameter tensor: rows (dim 0, what FSDP2 shards) × cols (the other dims), and what it is."""

    name: str
    rows: int
    cols: int  # 1 for vectors; the product of the other dims for 3-D expert weights
    kind: str  # "linear" (a decoder nn.Linear), "conv1d", "experts", "embedding", "head", "norm", "bias", "other"

    @property
    def numel(self) -> int:
        return self.rows * self.cols


class Linear(NamedTuple):
    """A module LoRA can adapt as a layer (nn.Linear or GPT-2's Conv1D): A is r × in, B out × r."""

    name: str
    fan_in: int
    fan_out: int


class Experts(NamedTuple):
    """A 3-D MoE expert parameter (experts × … × …) LoRA reaches through peft's target_parameters:
    A is (r·experts) × in, B out × (r·experts)."""

    name: str
    experts: int
    fan_in: int
    fan_out: int


@dataclass(frozen=True)
class Dims:
    """A decoder's tensors, adaptable modules and the numbers the estimates need."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int  # the dense MLP's width (the guess and the docs' formulas use it)
    tied: bool
    source: str
    exact: bool = True  # False: a guess (from model.parameters_b, or an unknown model_type)
    named: bool = True  # module names known, so LoRA globs are resolved here
    layer_tensors: tuple[tuple[Tensor, ...], ...] = field(default=(), repr=False)  # per decoder layer
    outer_tensors: tuple[Tensor, ...] = field(default=(), repr=False)  # embeddings, final norm, head
    linears: tuple[Linear, ...] = field(default=(), repr=False)  # decoder layers' then the head's
    expert_params: tuple[Experts, ...] = field(default=(), repr=False)
    layer_activations: tuple[int, ...] = field(default=(), repr=False)  # elements autograd keeps per token, per layer
    outer_activations: int = 0  # … outside the layers (embedding output, final norm)
    head_name: str | None = HEAD

    def tensors(self) -> list[Tensor]:
        """Every parameter tensor (a tied head counted once, as model.parameters() does)."""
        first = [t for t in self.outer_tensors if t.kind == "embedding"]
        last = [t for t in self.outer_tensors if t.kind != "embedding"]
        return first + [t for layer in self.layer_tensors for t in layer] + last

    def linear_names(self) -> list[str]:
        """Every adaptable layer (nn.Linear or Conv1D) as named_modules() names it, the head last."""
        return [m.name for m in self.linears]

    def experts(self) -> list[Experts]:
        return list(self.expert_params)

    def shape_of(self, linear: str) -> tuple[int, int]:
        """(in, out) of a layer named as in `linear_names`."""
        return self._by_name[linear]

    @property
    def _by_name(self) -> dict[str, tuple[int, int]]:
        return {m.name: (m.fan_in, m.fan_out) for m in self.linears}

    @property
    def layer_params(self) -> int:
        """Parameters of the largest decoder layer: one FSDP2 unit."""
        return max((sum(t.numel for t in layer) for layer in self.layer_tensors), default=0)

    def largest_layer(self) -> tuple[Tensor, ...]:
        return max(self.layer_tensors, key=lambda layer: sum(t.numel for t in layer), default=())

    @property
    def outer_params(self) -> int:
        """Embeddings, final norm and output head: what FSDP2 keeps in the root unit."""
        return sum(t.numel for t in self.outer_tensors)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors())

    def activations_per_token(self, checkpointed: bool) -> int:
        """Elements autograd keeps per token through the layers (see docs/plan.md): every layer's,
        or with activation checkpointing each layer's input and one layer's again in backward."""
        if checkpointed:
            return self.layers * self.hidden + max(self.layer_activations, default=0) + self.outer_activations
        return sum(self.layer_activations) + self.outer_activations


# --- building the tensors ---------------------------------------------------------------------------


@dataclass
class _Layer:
    """Collects one decoder layer's tensors and adaptable modules, in the modeling file's terms."""

    prefix: str
    hidden: int
    tensors: list[Tensor] = field(default_factory=list)
    linears: list[Linear] = field(default_factory=list)
    experts: list[Experts] = field(default_factory=list)
    activations: int = 0

    def linear(self, name: str, fan_in: int, fan_out: int, bias: bool = False) -> None:
        full = f"{self.prefix}.{name}"
        self.tensors.append(Tensor(f"{full}.weight", fan_out, fan_in, "linear"))
        if bias:
            self.tensors.append(Tensor(f"{full}.bias", fan_out, 1, "bias"))
        self.linears.append(Linear(full, fan_in, fan_out))

    def conv1d(self, name: str, fan_in: int, fan_out: int) -> None:
        """GPT-2's Conv1D: a linear layer whose weight is stored in × out, with a bias."""
        full = f"{self.prefix}.{name}"
        self.tensors += [Tensor(f"{full}.weight", fan_in, fan_out, "conv1d"), Tensor(f"{full}.bias", fan_out, 1, "bias")]
        self.linears.append(Linear(full, fan_in, fan_out))

    def norm(self, name: str, size: int, bias: bool = False, rows: int = 1) -> None:
        full = f"{self.prefix}.{name}"
        self.tensors.append(Tensor(f"{full}.weight", rows, size, "norm") if rows > 1 else Tensor(f"{full}.weight", size, 1, "norm"))
        if bias:
            self.tensors.append(Tensor(f"{full}.bias", size, 1, "bias"))
        if size == self.hidden and rows == 1:
            self.activations += 6 * self.hidden  # its input, the fp32 upcast and the normalised output

    def param(self, name: str, *shape: int, kind: str = "other") -> None:
        rows, cols = shape[0], 1
        for d in shape[1:]:
            cols *= d
        self.tensors.append(Tensor(f"{self.prefix}.{name}", rows, cols, kind))

    def experts_param(self, name: str, experts: int, dim1: int, dim2: int, transposed: bool) -> None:
        """A 3-D expert weight: (experts, out, in), or (experts, in, out) when `transposed` (gpt-oss)."""
        full = f"{self.prefix}.{name}"
        self.tensors.append(Tensor(full, experts, dim1 * dim2, "experts"))
        fan_in, fan_out = (dim1, dim2) if transposed else (dim2, dim1)
        self.experts.append(Experts(full, experts, fan_in, fan_out))

    # Blocks shared by many families -------------------------------------------------------------

    def attention(self, config: "_Config", q_out: int | None = None, o_in: int | None = None, bias: bool = False,
                  o_bias: bool | None = None, block: str = "self_attn") -> None:
        h, hd = config.hidden, config.head_dim
        q, kv = config.heads * hd, config.kv_heads * hd
        self.linear(f"{block}.q_proj", h, q_out or q, bias)
        self.linear(f"{block}.k_proj", h, kv, bias)
        self.linear(f"{block}.v_proj", h, kv, bias)
        self.linear(f"{block}.o_proj", o_in or q, h, bias if o_bias is None else o_bias)
        self.activations += 4 * q  # q, k and v as attention reads them, its output (k, v ≤ q)

    def gated_mlp(self, h: int, i: int, bias: bool = False, block: str = "mlp") -> None:
        for name in ("gate_proj", "up_proj"):
            self.linear(f"{block}.{name}", h, i, bias)
        self.linear(f"{block}.down_proj", i, h, bias)
        self.activations += 4 * i  # gate, up, the activation and their product

    def moe(self, config: "_Config", experts: int, i: int, top_k: int, router_bias: bool = False,
            router: str = "gate", expert_bias: bool = False, transposed: bool = False) -> None:
        """transformers' fused experts: a router (not an nn.Linear) and 3-D gate_up / down weights."""
        h = config.hidden
        self.param(f"mlp.{router}.weight", experts, h)
        if router_bias:
            self.param(f"mlp.{router}.bias", experts, kind="bias")
        if transposed:
            self.experts_param("mlp.experts.gate_up_proj", experts, h, 2 * i, True)
        else:
            self.experts_param("mlp.experts.gate_up_proj", experts, 2 * i, h, False)
        if expert_bias:
            self.param("mlp.experts.gate_up_proj_bias", experts, 2 * i, kind="bias")
        if transposed:
            self.experts_param("mlp.experts.down_proj", experts, i, h, True)
        else:
            self.experts_param("mlp.experts.down_proj", experts, h, i, False)
        if expert_bias:
            self.param("mlp.experts.down_proj_bias", experts, h, kind="bias")
        self.activations += top_k * (4 * i + 2 * h) + experts  # each token's experts, their gathered input and output


class _Config:
    """A config.json over its family's defaults, with the numbers every family has."""

    def __init__(self, raw: dict[str, Any], defaults: dict[str, Any], aliases: dict[str, str] | None = None):
        self.raw = {**defaults, **raw}
        for alias, key in (aliases or {}).items():
            if alias in raw and raw[alias] is not None:
                self.raw[key] = raw[alias]
        self.hidden = int(self["hidden_size"])
        self.layers = int(self["num_hidden_layers"])
        self.heads = int(self["num_attention_heads"])
        self.kv_heads = int(self.get("num_key_value_heads") or self.heads)
        self.vocab = int(self["vocab_size"])
        self.head_dim = int(self.get("head_dim") or self.hidden // self.heads)
        self.intermediate = int(self.get("intermediate_size") or 4 * self.hidden)
        self.tied = bool(self.get("tie_word_embeddings", False))

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key, default)
        return default if value is None else value


# --- the families -----------------------------------------------------------------------------------
# Each builds decoder layer `n` as the family's modeling_*.py in transformers does.


def _llama(layer: _Layer, config: _Config, n: int) -> None:
    """Llama, Mistral, Granite, SmolLM3: q/k/v/o and a gated MLP, two RMSNorms."""
    layer.attention(config, bias=bool(config.get("attention_bias")))
    layer.gated_mlp(config.hidden, config.intermediate, bias=bool(config.get("mlp_bias")))
    layer.norm("input_layernorm", config.hidden)
    layer.norm("post_attention_layernorm", config.hidden)


def _qwen2(layer: _Layer, config: _Config, n: int) -> None:
    layer.attention(config, bias=True, o_bias=False)
    layer.gated_mlp(config.hidden, config.intermediate)
    layer.norm("input_layernorm", config.hidden)
    layer.norm("post_attention_layernorm", config.hidden)


def _sparse(config: _Config, n: int, experts: int) -> bool:
    """Qwen3-MoE and Qwen3-Next: which layers have experts."""
    every = int(config.get("decoder_sparse_step", 1))
    return n not in (config.get("mlp_only_layers") or []) and experts > 0 and (n + 1) % every == 0


def _qwen3(layer: _Layer, config: _Config, n: int) -> None:
    layer.attention(config, bias=bool(config.get("attention_bias")))
    layer.norm("self_attn.q_norm", config.head_dim)
    layer.norm("self_attn.k_norm", config.head_dim)
    experts = int(config.get("num_experts", 0)) if config["model_type"] == "qwen3_moe" else 0
    if _sparse(config, n, experts):
        layer.moe(config, experts, int(config["moe_intermediate_size"]), int(config["num_experts_per_tok"]))
    else:
        layer.gated_mlp(config.hidden, config.intermediate)
    layer.norm("input_layernorm", config.hidden)
    layer.norm("post_attention_layernorm", config.hidden)


def _mixtral(layer: _Layer, config: _Config, n: int) -> None:
    layer.attention(config)
    layer.moe(config, int(config["num_local_experts"]), config.intermediate, int(config["num_experts_per_tok"]))
    layer.norm("input_layernorm", config.hidden)
    layer.norm("post_attention_layernorm", config.hidden)


def _gemma(layer: _Layer, config: _Config, n: int) -> None:
    """Gemma (2 norms), Gemma 2 (4 norms), Gemma 3 text (4 norms and q/k norms)."""
    layer.attention(config, bias=bool(config.get("attention_bias")))
    if config["model_type"] == "gemma3_text":
        layer.norm("self_attn.q_norm", config.head_dim)
        layer.norm("self_attn.k_norm", config.head_dim)
    layer.gated_mlp(config.hidden, config.intermediate)
    layer.norm("input_layernorm", config.hidden)
    layer.norm("post_attention_layernorm", config.hidden)
    if config["model_type"] != "gemma":
        layer.norm("pre_feedforward_layernorm", config.hidden)
        layer.norm("post_feedforward_layernorm", config.hidden)


def _phi3(layer: _Layer, config: _Config, n: int) -> None:
    """Phi-3: fused qkv_proj and gate_up_proj."""
    h, hd, i = config.hidden, config.head_dim, config.intermediate
    layer.linear("self_attn.o_proj", config.heads * hd, h)
    layer.linear("self_attn.qkv_proj", h, (config.heads + 2 * config.kv_heads) * hd)
    layer.activations += 4 * config.heads * hd
    layer.linear("mlp.gate_up_proj", h, 2 * i)
    layer.linear("mlp.down_proj", i, h)
    layer.activations += 4 * i
    layer.norm("input_layernorm", h)
    layer.norm("post_attention_layernorm", h)


def _phi(layer: _Layer, config: _Config, n: int) -> None:
    """Phi(-2): biased q/k/v and `dense`, a plain fc1/fc2 MLP, one LayerNorm (parallel blocks)."""
    h, hd, i = config.hidden, config.head_dim, config.intermediate
    for name, out in (("q_proj", config.heads * hd), ("k_proj", config.kv_heads * hd),
                      ("v_proj", config.kv_heads * hd)):
        layer.linear(f"self_attn.{name}", h, out, bias=True)
    layer.linear("self_attn.dense", config.heads * hd, h, bias=True)
    layer.activations += 4 * config.heads * hd
    if config.get("qk_layernorm"):
        layer.norm("self_attn.q_layernorm", hd, bias=True)
        layer.norm("self_attn.k_layernorm", hd, bias=True)
    layer.linear("mlp.fc1", h, i, bias=True)
    layer.linear("mlp.fc2", i, h, bias=True)
    layer.activations += 2 * i  # fc1's output and the activation
    layer.norm("input_layernorm", h, bias=True)


def _olmo2(layer: _Layer, config: _Config, n: int) -> None:
    layer.attention(config, bias=bool(config.get("attention_bias")))
    layer.norm("self_attn.q_norm", config.heads * config.head_dim)
    layer.norm("self_attn.k_norm", config.kv_heads * config.head_dim)
    layer.gated_mlp(config.hidden, config.intermediate)
    layer.norm("post_attention_layernorm", config.hidden)
    layer.norm("post_feedforward_layernorm", config.hidden)


def _cohere(layer: _Layer, config: _Config, n: int) -> None:
    """Cohere: parallel attention and MLP after one weight-only LayerNorm; optional per-head q/k norms."""
    layer.attention(config, bias=bool(config.get("attention_bias")))
    if config.get("use_qk_norm"):
        layer.norm("self_attn.q_norm", config.head_dim, rows=config.heads)
        layer.norm("self_attn.k_norm", config.head_dim, rows=config.kv_heads)
    layer.gated_mlp(config.hidden, config.intermediate)
    layer.norm("input_layernorm", config.hidden)


def _stablelm(layer: _Layer, config: _Config, n: int) -> None:
    qkv_bias = bool(config.get("use_qkv_bias"))
    h, hd = config.hidden, config.head_dim
    layer.linear("self_attn.q_proj", h, config.heads * hd, qkv_bias)
    layer.linear("self_attn.k_proj", h, config.kv_heads * hd, qkv_bias)
    layer.linear("self_attn.v_proj", h, config.kv_heads * hd, qkv_bias)
    layer.linear("self_attn.o_proj", h, h)
    layer.activations += 4 * h
    if config.get("qk_layernorm"):
        for which, count in (("q", config.heads), ("k", config.kv_heads)):
            for head in range(count):
                layer.norm(f"self_attn.{which}_layernorm.norms.{head}", hd)
    layer.gated_mlp(h, config.intermediate)
    layer.norm("input_layernorm", h, bias=True)
    if not config.get("use_parallel_residual"):
        layer.norm("post_attention_layernorm", h, bias=True)


def _gpt_neox(layer: _Layer, config: _Config, n: int) -> None:
    h, i, bias = config.hidden, config.intermediate, bool(config.get("attention_bias", True))
    layer.linear("attention.query_key_value", h, 3 * h, bias)
    layer.linear("attention.dense", h, h, bias)
    layer.activations += 4 * h
    layer.linear("mlp.dense_h_to_4h", h, i, True)
    layer.linear("mlp.dense_4h_to_h", i, h, True)
    layer.activations += 2 * i
    layer.norm("input_layernorm", h, bias=True)
    layer.norm("post_attention_layernorm", h, bias=True)


def _gpt2(layer: _Layer, config: _Config, n: int) -> None:
    h, i = config.hidden, int(config.get("n_inner") or 4 * config.hidden)
    layer.norm("ln_1", h, bias=True)
    layer.conv1d("attn.c_attn", h, 3 * h)
    layer.conv1d("attn.c_proj", h, h)
    layer.activations += 4 * h
    layer.norm("ln_2", h, bias=True)
    layer.conv1d("mlp.c_fc", h, i)
    layer.conv1d("mlp.c_proj", i, h)
    layer.activations += 2 * i


def _falcon(layer: _Layer, config: _Config, n: int) -> None:
    h, hd, bias = config.hidden, config.hidden // config.heads, bool(config.get("bias"))
    new = bool(config.get("new_decoder_architecture"))
    kv_heads = int(config.get("num_kv_heads") or config.heads)
    qkv = (2 * kv_heads + config.heads) * hd if new else h + 2 * hd if config.get("multi_query", True) else 3 * h
    layer.linear("self_attention.query_key_value", h, qkv, bias)
    layer.linear("self_attention.dense", h, h, bias)
    layer.activations += 4 * h
    i = int(config.get("ffn_hidden_size") or 4 * h)
    layer.linear("mlp.dense_h_to_4h", h, i, bias)
    layer.linear("mlp.dense_4h_to_h", i, h, bias)
    layer.activations += 2 * i
    lns = config.get("num_ln_in_parallel_attn") or (2 if new else None)
    if not config.get("parallel_attn", True):
        layer.norm("post_attention_layernorm", h, bias=True)
        layer.norm("input_layernorm", h, bias=True)
    elif lns == 2:
        layer.norm("ln_attn", h, bias=True)
        layer.norm("ln_mlp", h, bias=True)
    else:
        layer.norm("input_layernorm", h, bias=True)


def _gpt_oss(layer: _Layer, config: _Config, n: int) -> None:
    layer.attention(config, bias=bool(config.get("attention_bias", True)))
    layer.param("self_attn.sinks", config.heads)
    layer.moe(config, int(config["num_local_experts"]), config.intermediate, int(config["num_experts_per_tok"]),
              router_bias=True, router="router", expert_bias=True, transposed=True)
    layer.norm("input_layernorm", config.hidden)
    layer.norm("post_attention_layernorm", config.hidden)


def _deepseek_v3(layer: _Layer, config: _Config, n: int) -> None:
    """Multi-head latent attention (low-rank q and kv), dense MLPs first, then experts with shared ones."""
    h, heads, bias = config.hidden, config.heads, bool(config.get("attention_bias"))
    nope, rope, v = int(config["qk_nope_head_dim"]), int(config["qk_rope_head_dim"]), int(config["v_head_dim"])
    q_rank, kv_rank = config.get("q_lora_rank"), int(config["kv_lora_rank"])
    if q_rank is None:
        layer.linear("self_attn.q_proj", h, heads * (nope + rope))
    else:
        layer.linear("self_attn.q_a_proj", h, int(q_rank), bias)
        layer.norm("self_attn.q_a_layernorm", int(q_rank))
        layer.linear("self_attn.q_b_proj", int(q_rank), heads * (nope + rope))
    layer.linear("self_attn.kv_a_proj_with_mqa", h, kv_rank + rope, bias)
    layer.norm("self_attn.kv_a_layernorm", kv_rank)
    layer.linear("self_attn.kv_b_proj", kv_rank, heads * (nope + v))
    layer.linear("self_attn.o_proj", heads * v, h, bias)
    layer.activations += 4 * heads * (nope + rope)
    if n >= int(config.get("first_k_dense_replace", 0)):
        i = int(config["moe_intermediate_size"])
        layer.moe(config, int(config["n_routed_experts"]), i, int(config["num_experts_per_tok"]))
        layer.gated_mlp(h, i * int(config.get("n_shared_experts") or 1), block="mlp.shared_experts")
    else:
        layer.gated_mlp(h, config.intermediate)
    layer.norm("input_layernorm", h)
    layer.norm("post_attention_layernorm", h)


def _qwen3_next_layer_types(config: _Config) -> list[str]:
    interval = int(config.get("full_attention_interval", 4))
    return config.get("layer_types") or ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                                         for i in range(config.layers)]


def _qwen3_next(layer: _Layer, config: _Config, n: int) -> None:
    """Linear (gated delta-net) and full (gated q) attention layers; experts with a shared expert."""
    h = config.hidden
    if _qwen3_next_layer_types(config)[n] == "linear_attention":
        k_heads, v_heads = int(config["linear_num_key_heads"]), int(config["linear_num_value_heads"])
        k_dim, v_dim = k_heads * int(config["linear_key_head_dim"]), v_heads * int(config["linear_value_head_dim"])
        layer.param("linear_attn.dt_bias", v_heads)
        layer.param("linear_attn.A_log", v_heads)
        conv = 2 * k_dim + v_dim
        layer.param("linear_attn.conv1d.weight", conv, 1, int(config.get("linear_conv_kernel_dim", 4)))
        layer.linear("linear_attn.in_proj_qkvz", h, 2 * k_dim + 2 * v_dim)
        layer.linear("linear_attn.in_proj_ba", h, 2 * v_heads)
        layer.norm("linear_attn.norm", int(config["linear_value_head_dim"]))
        layer.linear("linear_attn.out_proj", v_dim, h)
        layer.activations += 2 * (2 * k_dim + 2 * v_dim) + 2 * v_dim
    else:
        q = config.heads * config.head_dim
        layer.attention(config, q_out=2 * q, o_in=q, bias=bool(config.get("attention_bias")))
        layer.norm("self_attn.q_norm", config.head_dim)
        layer.norm("self_attn.k_norm", config.head_dim)
    experts = int(config.get("num_experts", 0))
    if _sparse(config, n, experts):
        layer.moe(config, experts, int(config["moe_intermediate_size"]), int(config["num_experts_per_tok"]))
        layer.gated_mlp(h, int(config["shared_expert_intermediate_size"]), block="mlp.shared_expert")
        layer.linear("mlp.shared_expert_gate", h, 1)
    else:
        layer.gated_mlp(h, config.intermediate)
    layer.norm("input_layernorm", h)
    layer.norm("post_attention_layernorm", h)


class Shape(NamedTuple):
    """How one family (`model_type`, the keys of `ftcore.families.FAMILIES`) lays out its tensors."""

    layer: Callable[[_Layer, _Config, int], None]
    defaults: dict[str, Any]  # the config class's defaults for the keys the shapes read
    layers_at: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    final_norm_bias: bool = False
    head_bias: bool = False
    positions: str | None = None  # learned position embeddings (GPT-2)
    aliases: dict[str, str] = {}


_LLAMA = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
          "num_attention_heads": 32, "tie_word_embeddings": False}

# Defaults as transformers' configuration_*.py has them (a hub config.json may leave keys out).
SHAPES: dict[str, Shape] = {
    "llama": Shape(_llama, _LLAMA),
    "mistral": Shape(_llama, {**_LLAMA, "intermediate_size": 14336, "num_key_value_heads": 8}),
    "granite": Shape(_llama, _LLAMA),
    "smollm3": Shape(_llama, {**_LLAMA, "vocab_size": 128256, "hidden_size": 2048, "num_hidden_layers": 36,
                               "num_attention_heads": 16, "num_key_value_heads": 4, "tie_word_embeddings": True}),
    "qwen2": Shape(_qwen2, {**_LLAMA, "vocab_size": 151936, "intermediate_size": 22016}),
    "qwen3": Shape(_qwen3, {**_LLAMA, "vocab_size": 151936, "intermediate_size": 22016, "head_dim": 128}),
    "qwen3_moe": Shape(_qwen3, {**_LLAMA, "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
                                 "num_hidden_layers": 24, "num_key_value_heads": 4, "moe_intermediate_size": 768,
                                 "num_experts_per_tok": 8, "num_experts": 128, "decoder_sparse_step": 1},
                        aliases={"num_local_experts": "num_experts"}),
    "mixtral": Shape(_mixtral, {**_LLAMA, "intermediate_size": 14336, "num_key_value_heads": 8,
                                 "num_experts_per_tok": 2, "num_local_experts": 8},
                      aliases={"num_experts": "num_local_experts"}),
    "gemma": Shape(_gemma, {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
                             "num_hidden_layers": 28, "num_attention_heads": 16, "head_dim": 256,
                             "tie_word_embeddings": True}),
    "gemma2": Shape(_gemma, {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
                              "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                              "head_dim": 256, "tie_word_embeddings": True}),
    "gemma3_text": Shape(_gemma, {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
                                   "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                                   "head_dim": 256, "tie_word_embeddings": True}),
    "phi3": Shape(_phi3, {**_LLAMA, "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192}),
    "phi": Shape(_phi, {**_LLAMA, "vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192,
                         "num_hidden_layers": 24}, final_norm="model.final_layernorm", final_norm_bias=True,
                  head_bias=True),
    "olmo2": Shape(_olmo2, {**_LLAMA, "vocab_size": 50304}),
    "cohere": Shape(_cohere, {**_LLAMA, "vocab_size": 256000, "hidden_size": 8192, "intermediate_size": 22528,
                               "num_hidden_layers": 40, "num_attention_heads": 64, "tie_word_embeddings": True}),
    "stablelm": Shape(_stablelm, {**_LLAMA, "vocab_size": 50304, "intermediate_size": 6912, "hidden_size": 2560},
                       final_norm_bias=True),
    "gpt_neox": Shape(_gpt_neox, {**_LLAMA, "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44,
                                   "num_attention_heads": 64, "intermediate_size": 24576},
                       layers_at="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
                       final_norm_bias=True),
    "gpt2": Shape(_gpt2, {"vocab_size": 50257, "n_positions": 1024, "hidden_size": 768, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "tie_word_embeddings": True},
                   layers_at="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
                   final_norm_bias=True, positions="transformer.wpe",
                   aliases={"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads"}),
    "falcon": Shape(_falcon, {"vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32,
                               "num_attention_heads": 71, "tie_word_embeddings": True,
                               "multi_query": True, "parallel_attn": True},
                     layers_at="transformer.h", embed="transformer.word_embeddings", final_norm="transformer.ln_f",
                     final_norm_bias=True,
                     aliases={"n_embed": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
                              "n_head_kv": "num_kv_heads"}),
    "gpt_oss": Shape(_gpt_oss, {"vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
                                 "num_hidden_layers": 36, "num_attention_heads": 64, "num_key_value_heads": 8,
                                 "head_dim": 64, "num_local_experts": 128, "num_experts_per_tok": 4,
                                 "attention_bias": True, "tie_word_embeddings": False},
                      aliases={"num_experts": "num_local_experts"}),
    "deepseek_v3": Shape(_deepseek_v3, {"vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
                                         "moe_intermediate_size": 2048, "num_hidden_layers": 61,
                                         "num_attention_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
                                         "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
                                         "v_head_dim": 128, "qk_nope_head_dim": 128, "num_experts_per_tok": 8,
                                         "first_k_dense_replace": 3, "tie_word_embeddings": False},
                          aliases={"num_local_experts": "n_routed_experts"}),
    "qwen3_next": Shape(_qwen3_next, {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
                                       "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2,
                                       "head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
                                       "linear_value_head_dim": 128, "linear_num_key_heads": 16,
                                       "linear_num_value_heads": 32, "decoder_sparse_step": 1,
                                       "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
                                       "num_experts_per_tok": 10, "num_experts": 512, "tie_word_embeddings": False}),
}


def dims_from_config(config: dict[str, Any], source: str) -> Dims:
    """The model a config.json describes. An unknown `model_type` is priced as a Llama-shaped
    decoder from the keys it shares with Llama, and marked inexact and unnamed."""
    model_type = config.get("model_type") or "llama"
    shape = SHAPES.get(model_type)
    known = shape is not None
    if not known:
        shape = SHAPES["llama"]
        source = f"{source} (model_type {model_type!r} priced as a Llama-shaped decoder)"
    merged = _Config({**config, "model_type": model_type if known else "llama"}, shape.defaults, shape.aliases)
    layers, linears, experts, activations = [], [], [], []
    for n in range(merged.layers):
        layer = _Layer(f"{shape.layers_at}.{n}", merged.hidden)
        shape.layer(layer, merged, n)
        layers.append(tuple(layer.tensors))
        linears += layer.linears
        experts += layer.experts
        activations.append(layer.activations)
    outer = [Tensor(f"{shape.embed}.weight", merged.vocab, merged.hidden, "embedding")]
    if shape.positions:
        positions = int(merged.get("n_positions", 1024))
        outer.append(Tensor(f"{shape.positions}.weight", positions, merged.hidden, "embedding"))
    outer.append(Tensor(f"{shape.final_norm}.weight", merged.hidden, 1, "norm"))
    if shape.final_norm_bias:
        outer.append(Tensor(f"{shape.final_norm}.bias", merged.hidden, 1, "bias"))
    if not merged.tied:
        outer.append(Tensor(f"{HEAD}.weight", merged.vocab, merged.hidden, "head"))
    if shape.head_bias:
        outer.append(Tensor(f"{HEAD}.bias", merged.vocab, 1, "bias"))
    linears.append(Linear(HEAD, merged.hidden, merged.vocab))
    return Dims(model_type=model_type, hidden=merged.hidden, layers=merged.layers, heads=merged.heads,
                kv_heads=merged.kv_heads, vocab=merged.vocab, intermediate=merged.intermediate, tied=merged.tied,
                source=source, exact=known, named=known,
                layer_tensors=tuple(layers), outer_tensors=tuple(outer), linears=tuple(linears),
                expert_params=tuple(experts), layer_activations=tuple(activations), outer_activations=8 * merged.hidden)


def dims_from_size(parameters_b: float, why: str = "") -> Dims:
    """A Llama-shaped guess from the parameter count alone (rough: a plan from it never refuses).

    Llama models keep hidden/layers ≈ 128 and intermediate ≈ 3.5 × hidden, so a decoder of
    P parameters has about P ≈ 13 h³ / 128 (embeddings aside).
    """
    hidden = max(128, round((128 * parameters_b * 1e9 / 13) ** (1 / 3) / 128) * 128)
    config = {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": max(1, hidden // 128),
              "intermediate_size": round(3.5 * hidden / 256) * 256, "num_attention_heads": hidden // 128,
              "num_key_value_heads": 8, "vocab_size": 128256}
    guess = dims_from_config(config, "")
    return _replace(guess, source=f"a guess from model.parameters_b={parameters_b}" + (f", because {why}" if why else ""),
                    exact=False, named=False)


def _replace(dims: Dims, **changes) -> Dims:
    from dataclasses import replace

    return replace(dims, **changes)


# --- published configs ------------------------------------------------------------------------------
# The config.json of the hub models the shipped factories name (their shape keys), so `ft plan` and
# `ft submit` price them exactly without the network; other hub ids are read from the hub.

_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "num_key_value_heads": 8, "tie_word_embeddings": False}
PUBLISHED: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": {**_LLAMA3, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
                                "num_attention_heads": 32},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3, "hidden_size": 4096, "num_hidden_layers": 32,
                                   "intermediate_size": 14336, "num_attention_heads": 32},
    "meta-llama/Llama-3.2-1B": {**_LLAMA3, "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
                                "num_attention_heads": 32, "head_dim": 64, "tie_word_embeddings": True},
    "meta-llama/Llama-3.1-70B": {**_LLAMA3, "hidden_size": 8192, "num_hidden_layers": 80,
                                 "intermediate_size": 28672, "num_attention_heads": 64},
    "meta-llama/Llama-3.1-405B": {**_LLAMA3, "hidden_size": 16384, "num_hidden_layers": 126,
                                  "intermediate_size": 53248, "num_attention_heads": 128},
    "Qwen/Qwen2.5-1.5B": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536, "num_hidden_layers": 28,
                          "intermediate_size": 8960, "num_attention_heads": 12, "num_key_value_heads": 2,
                          "tie_word_embeddings": True},
}
# An -Instruct variant has its base's shapes.
for _id in list(PUBLISHED):
    PUBLISHED[f"{_id}-Instruct"] = PUBLISHED[_id]


def with_overrides(config: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A checkpoint's config.json with `model.config`'s keys over it, as the trainer builds it.

    Only the keys named change. A `model_type` other than the checkpoint's is refused: the
    weights at `source` belong to their own architecture, and another family's config over
    them re-initialises (or drops) the weights the two do not share."""
    from ftcore.errors import UserError

    named, found = overrides.get("model_type"), config.get("model_type")
    if named and found and named != found:
        raise UserError(f"model.config sets model_type={named} but {source} is a {found} checkpoint: a config "
                        "of another family over these weights would train a different model",
                        hint="drop model.config (model.config=null, or `config: null` in a recipe that "
                             "`extends:` one with a config), or keep only keys of this model")
    return {**config, **overrides}
