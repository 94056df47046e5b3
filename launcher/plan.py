"""Will the job fit? GPU memory per GPU, estimated from the job alone, before submitting.

    ft plan --factory llama3_8b_sft                      # the breakdown, and the verdict
    ft plan --factory llama31_8b peft=none --gpu-memory 80
    ft plan --factory llama31_405b_lora --json

The estimate follows what ft's trainer does (trainer/model.py), term by term, for one GPU:
model state (weights, gradients, Adam moments), the buffers FSDP2 all-gathers, activations
of one micro batch, the logits of the loss, and a fixed CUDA/NCCL overhead. docs/plan.md
gives every formula and checks it against the figures the recipes quote. No torch here:
`ft submit` calls `fit_warning` for every job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftcore.files import expand
from ftcore import policy
from ftcore.errors import UserError
from ftcore.schema import Job

GIB = 2**30
DEFAULT_GPU_GIB = 80.0  # an "80 GB" A100/H100 has 80 GiB (81,559 MiB of it visible to CUDA)
OVERHEAD_GIB = 3.0  # CUDA context, NCCL and cuBLAS buffers, allocator fragmentation
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights + fp8 absmax per 64 + fp32 per 256 blocks

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


# --- model dimensions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    """A Llama-shaped decoder (Llama, Qwen2, Mistral): what the memory terms need."""

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

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer in one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_heads * self.hd, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_params(self) -> int:
        bias = self.heads * self.hd + 2 * self.kv_heads * self.hd if self.qkv_bias else 0
        return sum(a * b for a, b in self.projections().values()) + bias + 2 * self.hidden  # + 2 RMSNorms

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
    "meta-llama/Llama-3.1-405B": _llama(16384, 126, 53248, 128, 8, 128256),
    "Qwen/Qwen2.5-1.5B": _llama(1536, 28, 8960, 12, 2, 151936, tied=True, qkv_bias=True),
}
_ALIASES = {"meta-llama-3.1-8b": "meta-llama/Llama-3.1-8B", "meta-llama-3.1-405b": "meta-llama/Llama-3.1-405B"}

# transformers' LlamaConfig defaults, for keys a random-init config leaves out.
_CONFIG_DEFAULTS = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "vocab_size": 32000}


def known_dims(name: str) -> Dims | None:
    """A known architecture by hub id, or by the last part of a path (`/models/Meta-Llama-3-8B`)."""
    if name in KNOWN:
        return replace(KNOWN[name], source=f"known config of {name}")
    base = name.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix("-instruct")
    by_base = {key.rsplit("/", 1)[-1].lower(): key for key in KNOWN} | _ALIASES
    key = by_base.get(base)
    return replace(KNOWN[key], source=f"known config of {key} (by name: {name})") if key else None


def dims_from_config(config: dict[str, Any], source: str) -> Dims:
    c = {**_CONFIG_DEFAULTS, **config}
    heads = int(c["num_attention_heads"])
    return Dims(
        hidden=int(c["hidden_size"]), layers=int(c["num_hidden_layers"]), intermediate=int(c["intermediate_size"]),
        heads=heads, kv_heads=int(c.get("num_key_value_heads") or heads), vocab=int(c["vocab_size"]),
        head_dim=c.get("head_dim"), tied=bool(c.get("tie_word_embeddings", False)),
        qkv_bias=bool(c.get("attention_bias", False)) or c.get("model_type") == "qwen2", source=source,
    )


def dims_from_size(parameters_b: float) -> Dims:
    """A Llama-shaped guess from the parameter count alone (rough: LoRA sizes and activations).

    Llama models keep hidden/layers ≈ 128 and intermediate ≈ 3.5 × hidden, so a decoder of
    P parameters has about P ≈ 13 h³ / 128 (embeddings aside).
    """
    hidden = max(128, round((128 * parameters_b * 1e9 / 13) ** (1 / 3) / 128) * 128)
    return Dims(hidden, max(1, hidden // 128), round(3.5 * hidden / 256) * 256, hidden // 128, 8, 128256,
                source=f"guessed from model.parameters_b={parameters_b}", exact=False)


def model_dims(job: Job) -> Dims:
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


# --- LoRA ----------------------------------------------------------------------------------------


def lora_targets(job: Job) -> list[str]:
    """Which of a decoder layer's projections (and `lm_head`) the job's peft globs adapt."""
    peft = job.peft
    if peft is None:
        return []
    names = {n: f"model.layers.0.{'self_attn' if n in ATTENTION else 'mlp'}.{n}" for n in ATTENTION + MLP}
    if peft.match_all_linear:
        chosen = list(names)
    else:
        chosen = [n for n, full in names.items() if policy.glob_matches(full, peft.target_modules)]
        if policy.glob_matches("lm_head", peft.target_modules):
            chosen.append("lm_head")
    return [n for n in chosen if not policy.glob_matches(names.get(n, n), peft.exclude_modules)]


def lora_params(job: Job, dims: Dims) -> int:
    """r × (in + out) for each adapted linear layer: A is r × in, B is out × r."""
    if job.peft is None:
        return 0
    r, shapes, total = job.peft.dim, dims.projections(), 0
    for name in lora_targets(job):
        if name == "lm_head":
            total += r * (dims.hidden + dims.vocab)
        else:
            total += dims.layers * r * sum(shapes[name])
    return total


# --- the estimate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    bytes: float
    how: str


@dataclass(frozen=True)
class Estimate:
    rows: tuple[Row, ...]
    dims: Dims
    params: int
    trainable: int
    world_size: int
    num_nodes: int
    devices: int
    strategy: str
    on_gpu: bool
    gpu_gib: float
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> float:
        return sum(r.bytes for r in self.rows)

    @property
    def model_state(self) -> float:
        """Weights, gradients and optimizer state: what does not depend on the batch."""
        return sum(r.bytes for r in self.rows if r.name in ("weights", "gradients", "optimizer"))

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_gib * GIB

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params, "trainable": self.trainable, "dims_source": self.dims.source,
            "layout": {"num_nodes": self.num_nodes, "devices": self.devices, "world_size": self.world_size,
                       "strategy": self.strategy, "accelerator": "gpu" if self.on_gpu else "cpu"},
            "rows": [{"name": r.name, "gib": r.bytes / GIB, "how": r.how} for r in self.rows],
            "total_gib": self.total / GIB, "gpu_gib": self.gpu_gib, "fits": self.fits if self.on_gpu else None,
            "notes": list(self.notes),
        }


def count(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e8 else f"{n / 1e6:.3g}M" if n >= 1e5 else f"{n:,.0f}"


def estimate(job: Job, gpu_gib: float = DEFAULT_GPU_GIB, num_nodes: int | None = None,
             devices: int | None = None, strategy: str | None = None) -> Estimate:
    """Peak memory of one training process of `job`, optionally on another layout or strategy."""
    num_nodes = num_nodes or job.trainer.num_nodes
    devices = devices or job.trainer.devices
    world = num_nodes * devices
    strategy = strategy or job.strategy
    dims = model_dims(job)
    on_gpu = job.trainer.accelerator == "gpu"
    lora = job.peft is not None
    sharded = strategy == "fsdp2"
    # The trainer computes in model.dtype on GPUs and in fp32 on CPUs.
    c = DTYPE_BYTES[job.model.dtype] if on_gpu else 4
    params = dims.params if dims.exact or not job.model.parameters_b else int(job.model.parameters_b * 1e9)
    adapters = lora_params(job, dims)
    trainable = adapters if lora else params
    notes: list[str] = []
    if not dims.exact:
        notes.append(f"model shape {dims.source}: LoRA sizes and activations are rough")
    if lora and not adapters:
        notes.append(f"peft.target_modules {job.peft.target_modules} match none of "
                     f"{', '.join(ATTENTION + MLP)} (the trainer will refuse this job)")
    rows: list[Row] = []

    # Model state. FSDP2 (trainer/model.py) keeps every parameter as an fp32 shard, frozen
    # ones included, and casts to model.dtype per layer for compute: the fp32 shards are
    # the master weights. Data parallel keeps the frozen base in model.dtype (nf4 with
    # QLoRA) and peft keeps adapters in fp32; a non-sharded SFT (strategy=ddp) trains the
    # weights in model.dtype itself, with gradients and Adam moments in that dtype too.
    if sharded:
        rows.append(Row("weights", (params + adapters) * 4 / world,
                        f"{count(params + adapters)} params × 4 B (fp32 shards) / {world}"))
        rows.append(Row("gradients", trainable * 4 / world, f"{count(trainable)} trainable × 4 B / {world}"))
        rows.append(Row("optimizer", trainable * 8 / world, f"Adam: 2 fp32 moments × {count(trainable)} / {world}"))
    elif lora:
        if job.model.quantization == "nf4":
            linear = dims.layers * sum(a * b for a, b in dims.projections().values())
            # prepare_model_for_kbit_training casts what is not quantized to fp32.
            base = linear * NF4_BYTES + (params - linear) * 4
            how = f"{count(linear)} nf4 linear params × {NF4_BYTES:.3f} B + {count(params - linear)} others × 4 B"
        else:
            base = params * c
            how = f"{count(params)} frozen × {c} B"
        rows.append(Row("weights", base + adapters * 4, f"{how} + {count(adapters)} LoRA × 4 B"))
        rows.append(Row("gradients", adapters * 4, f"{count(adapters)} LoRA × 4 B"))
        rows.append(Row("optimizer", adapters * 8, f"Adam: 2 fp32 moments × {count(adapters)} LoRA"))
    else:
        rows.append(Row("weights", params * c, f"{count(params)} × {c} B (no fp32 master copy)"))
        rows.append(Row("gradients", params * c, f"{count(params)} × {c} B"))
        rows.append(Row("optimizer", params * 2 * c, f"Adam: 2 moments × {count(params)} × {c} B"))

    if sharded:
        # Two decoder layers gathered at once (the current one and the prefetched next), and
        # the root unit (embeddings, head, final norm) unsharded for the whole step; under
        # SFT the largest unit's gradient is also unsharded, in model.dtype and as the fp32
        # copy that is reduce-scattered.
        gathered = (2 * dims.layer_params + dims.outer_params) * c
        how = f"(2 layers × {count(dims.layer_params)} + root {count(dims.outer_params)}) × {c} B"
        if not lora:
            largest = max(dims.layer_params, dims.outer_params)
            gathered += largest * (c + 4)
            how += f" + gradient of {count(largest)} × ({c} + 4) B"
        rows.append(Row("FSDP2 buffers", gathered, how))

    tokens = job.data.micro_batch_size * job.data.max_seq_length
    per_layer = 16 * dims.hidden + 4 * dims.intermediate  # elements saved per token, see docs/plan.md
    if job.model.activation_checkpointing:
        # Each layer keeps only its input; one layer's activations exist again in backward.
        elements = dims.layers * dims.hidden + per_layer + 8 * dims.hidden
        how = f"{tokens} tokens × (layers × h + (16h + 4i) + 8h) × {c} B (checkpointed)"
    else:
        elements = dims.layers * per_layer + 8 * dims.hidden
        how = f"{tokens} tokens × (layers × (16h + 4i) + 8h) × {c} B"
    rows.append(Row("activations", tokens * elements * c, how))
    loss_tokens = min(tokens, policy.LOSS_CHUNK_TOKENS)
    rows.append(Row("logits", loss_tokens * dims.vocab * (c + 8),
                    f"{loss_tokens} tokens × vocab {dims.vocab} × ({c} + 4 + 4) B"))
    if on_gpu:
        rows.append(Row("CUDA/NCCL overhead", OVERHEAD_GIB * GIB, "fixed"))
    return Estimate(tuple(rows), dims, params, trainable, world, num_nodes, devices, strategy, on_gpu, gpu_gib,
                    tuple(notes))


# --- layouts -----------------------------------------------------------------------------------


def layouts(gpus_per_node: int = 8, max_nodes: int = 64) -> list[tuple[int, int]]:
    """Allocations to try, smallest first: 1, 2, 4, … GPUs on one node, then whole nodes."""
    one_node = [d for d in (1, 2, 4, 8, 16) if d < gpus_per_node] + [gpus_per_node]
    return [(1, d) for d in one_node] + [(n, gpus_per_node) for n in range(2, max_nodes + 1)]


@dataclass(frozen=True)
class Fit:
    num_nodes: int
    devices: int
    strategy: str
    estimate: Estimate

    def describe(self, job: Job) -> str:
        text = f"{self.num_nodes} node(s) × {self.devices} GPU(s) ({self.estimate.total / GIB:.1f} GiB per GPU)"
        if self.strategy != job.strategy:
            text += f" with trainer.strategy={self.strategy}"
        per_step = job.data.micro_batch_size * self.num_nodes * self.devices
        if job.data.global_batch_size % per_step:
            text += (f"; data.global_batch_size={job.data.global_batch_size} must then be a multiple of "
                     f"micro batch × GPUs = {per_step}")
        return text


def smallest_fit(job: Job, gpu_gib: float = DEFAULT_GPU_GIB, gpus_per_node: int = 8) -> Fit | None:
    """The fewest GPUs on which the job fits, with its strategy; failing that with FSDP2."""
    strategies = [job.strategy] + (["fsdp2"] if job.strategy != "fsdp2" else [])
    for strategy in strategies:
        for nodes, devices in layouts(gpus_per_node):
            est = estimate(job, gpu_gib, nodes, devices, strategy)
            if est.fits:
                return Fit(nodes, devices, strategy, est)
            if strategy == "ddp" and nodes * devices > 1:
                break  # data parallel replicates everything: more GPUs never help
    return None


def fit_warning(job: Job, gpu_gib: float = DEFAULT_GPU_GIB) -> str | None:
    """One line for `ft submit` when the plan says the job will not fit its GPUs; else None."""
    if job.trainer.accelerator != "gpu":
        return None
    try:
        est = estimate(job, gpu_gib)
    except UserError:
        return None  # a model ft cannot size: nothing to warn about
    if est.fits:
        return None
    where = f"{job.trainer.num_nodes} node(s) × {job.trainer.devices} GPU(s)"
    fit = smallest_fit(job, gpu_gib)
    advice = f"smallest that fits: {fit.describe(job)}" if fit else "no layout up to 64 nodes fits"
    return (f"this job needs about {est.total / GIB:.0f} GiB per GPU, more than the {gpu_gib:g} GiB of "
            f"{where}; {advice} (`ft plan` shows the breakdown)")


def verdict(est: Estimate, job: Job) -> list[str]:
    """The lines `ft plan` prints under its table."""
    if not est.on_gpu:
        return [f"total ≈ {est.total / 2**20:.0f} MiB in the training process (CPU job: no GPU to fit)"]
    where = f"{est.num_nodes} node(s) × {est.devices} GPU(s) of {est.gpu_gib:g} GiB"
    lines = [f"total ≈ {est.total / GIB:.1f} GiB per GPU: "
             + (f"fits {where}" if est.fits else f"does NOT fit {where}")]
    fit = smallest_fit(job, est.gpu_gib)
    lines.append(f"smallest allocation that fits: {fit.describe(job)}" if fit else
                 "no allocation up to 64 nodes fits: use LoRA, a shorter max_seq_length or activation checkpointing")
    return lines
