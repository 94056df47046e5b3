"""The shape of a model from its job alone, without torch: what `ft plan` prices and the policy names.

A Llama-shaped decoder (Llama, Qwen2, Mistral) is described by a few numbers (`Dims`); from
them follow every tensor the trainer will hold (`Dims.tensors`) and the Hugging Face names of
its linear layers (`Dims.linear_names`), so the planner and the trainer's policy can resolve
LoRA globs and price each tensor before the job waits in a queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from ftcore.errors import UserError
from ftcore.files import expand

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# model_type values whose modules are named and shaped like Llama's in transformers.
LLAMA_LIKE = ("llama", "qwen2", "mistral")
HEAD = "lm_head"


class Tensor(NamedTuple):
    """One parameter tensor: rows (dim 0, what FSDP2 shards) × cols, and what it is."""

    name: str
    rows: int
    cols: int  # 1 for vectors
    kind: str  # "linear" (a decoder projection), "embedding", "head", "norm", "bias"

    @property
    def numel(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Dims:
    """A Llama-shaped decoder: what the memory terms and the layer names need."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None
    tied: bool = False  # output head shares the embedding matrix
    qkv_bias: bool = False
    source: str = ""
    exact: bool = True  # False: shape guessed from model.parameters_b
    named: bool = True  # layer names known (a Llama-like model_type), so globs can be resolved here

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer in one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_heads * self.hd, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @staticmethod
    def linear_name(layer: int, projection: str) -> str:
        """transformers' name of a decoder projection (`model.layers.3.self_attn.q_proj`)."""
        block = "self_attn" if projection in ATTENTION else "mlp"
        return f"model.layers.{layer}.{block}.{projection}"

    def linear_names(self) -> list[str]:
        """Every nn.Linear of the model, the output head last, as named_modules() names them."""
        return [self.linear_name(n, p) for n in range(self.layers) for p in ATTENTION + MLP] + [HEAD]

    def tensors(self) -> list[Tensor]:
        """Every parameter tensor (a tied head counted once, as model.parameters() does)."""
        h, V = self.hidden, self.vocab
        found = [Tensor("model.embed_tokens.weight", V, h, "embedding")]
        for n in range(self.layers):
            for p, (fan_in, fan_out) in self.projections().items():
                found.append(Tensor(f"{self.linear_name(n, p)}.weight", fan_out, fan_in, "linear"))
                if self.qkv_bias and p in ("q_proj", "k_proj", "v_proj"):
                    found.append(Tensor(f"{self.linear_name(n, p)}.bias", fan_out, 1, "bias"))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                found.append(Tensor(f"model.layers.{n}.{norm}.weight", h, 1, "norm"))
        found.append(Tensor("model.norm.weight", h, 1, "norm"))
        if not self.tied:
            found.append(Tensor(f"{HEAD}.weight", V, h, "head"))
        return found

    def shape_of(self, linear: str) -> tuple[int, int]:
        """(in, out) of a linear layer named as in `linear_names`."""
        if linear == HEAD:
            return self.hidden, self.vocab
        return self.projections()[linear.rsplit(".", 1)[-1]]

    @property
    def layer_params(self) -> int:
        return sum(t.numel for t in self.tensors() if t.name.startswith("model.layers.0."))

    @property
    def outer_params(self) -> int:
        """Embedding, final norm and output head: what FSDP2 keeps in the root unit."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.outer_params + self.layers * self.layer_params


def _llama(hidden, layers, intermediate, heads, kv_heads, vocab, **more) -> Dims:
    return Dims(hidden, layers, intermediate, heads, kv_heads, vocab, **more)


# Published configs (config.json on the hub), keyed by hub id; an -Instruct variant or a
# local folder of the same name has the same shape.
KNOWN: dict[str, Dims] = {
    "meta-llama/Llama-3.1-8B": _llama(4096, 32, 14336, 32, 8, 128256),
    "meta-llama/Meta-Llama-3-8B": _llama(4096, 32, 14336, 32, 8, 128256),
    "meta-llama/Llama-3.2-1B": _llama(2048, 16, 8192, 32, 8, 128256, tied=True),
    "meta-llama/Llama-3.1-70B": _llama(8192, 80, 28672, 64, 8, 128256),
    "meta-llama/Llama-3.1-405B": _llama(16384, 126, 53248, 128, 8, 128256),
    "Qwen/Qwen2.5-1.5B": _llama(1536, 28, 8960, 12, 2, 151936, tied=True, qkv_bias=True),
}
# What each known hub id's config.json says its model_type is (the shrunk factories use it).
MODEL_TYPES = {"Qwen/Qwen2.5-1.5B": "qwen2"}
_ALIASES = {"meta-llama-3.1-8b": "meta-llama/Llama-3.1-8B", "meta-llama-3.1-405b": "meta-llama/Llama-3.1-405B",
            "meta-llama-3.1-70b": "meta-llama/Llama-3.1-70B"}

# transformers' LlamaConfig defaults, for keys a random-init config leaves out.
_CONFIG_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "vocab_size": 32000}


def known_key(name: str) -> str | None:
    """The KNOWN key for a hub id, or for the last part of a path (`/models/Meta-Llama-3-8B`)."""
    if name in KNOWN:
        return name
    base = name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    by_base = {key.rsplit("/", 1)[-1].lower(): key for key in KNOWN} | _ALIASES
    return by_base.get(base)


def known_dims(name: str) -> Dims | None:
    key = known_key(name)
    if key is None:
        return None
    how = f"known config of {key}" + ("" if key == name else f" (by name: {name})")
    return replace(KNOWN[key], source=how)


def dims_from_config(config: dict[str, Any], source: str) -> Dims:
    c = {**_CONFIG_DEFAULTS, **config}
    heads = int(c["num_attention_heads"])
    return Dims(
        hidden=int(c["hidden_size"]), layers=int(c["num_hidden_layers"]), intermediate=int(c["intermediate_size"]),
        heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads), vocab=int(c["vocab_size"]),
        head_dim=c.get("head_dim"), tied=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=bool(c.get("attention_bias", False)) or c.get("model_type") == "qwen2", source=source,
        named=c.get("model_type", "llama") in LLAMA_LIKE,
    )


def dims_from_size(parameters_b: float) -> Dims:
    """A Llama-shaped guess from the parameter count alone (rough: LoRA sizes and activations).

    Llama models keep hidden/layers ≈ 128 and intermediate ≈ 3.5 × hidden, so a decoder of
    P parameters has about P ≈ 13 h³ / 128 (embeddings aside).
    """
    hidden = max(128, round((128 * parameters_b * 1e9 / 13) ** (1 / 3) / 128) * 128)
    return Dims(hidden, max(1, hidden // 128), round(3.5 * hidden / 256) * 256, hidden // 128, 8, 128256,
                source=f"guessed from model.parameters_b={parameters_b}", exact=False, named=False)


def model_dims(job) -> Dims:
    """From model.config (random init), a local config.json, the known table, or parameters_b."""
    model = job.model
    if model.init == "random":
        return dims_from_config(dict(model.config), "model.config (random init)")
    local = expand(model.path or "") / "config.json"
    if model.path and local.is_file():
        try:
            config = json.loads(local.read_text())
        except ValueError as err:
            raise UserError(f"{local} is not valid JSON ({err})") from None
        return dims_from_config({**config, **model.config}, str(local))
    known = known_dims(model.path or "")
    if known:
        return known
    if model.parameters_b:
        return dims_from_size(model.parameters_b)
    raise UserError(f"cannot size {model.path}: it is not a local folder with config.json nor a model "
                    f"ft knows ({', '.join(KNOWN)})", hint="set model.parameters_b=<billions> for a rough plan")
