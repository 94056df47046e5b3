"""Will the job fit? Memory of one training process, priced from the policy the trainer builds.

    ft plan --factory llama3_8b_sft                      # the breakdown, and the verdict
    ft plan --factory llama31_8b peft=none --gpu-memory 80
    ft plan --factory llama31_405b_lora --json

`ftcore.policy.decide` says what each tensor is stored as and where (the trainer builds
exactly that); this module multiplies it out over the model's tensors (`ftcore.arch`), shard
by shard, for one rank, against the site's GPU memory (`trainer.gpu_memory_gib`). The model is
the one its config.json describes (`launcher.modelconfig` finds it; a guess from
`model.parameters_b` only when none can be read, and a guess never refuses). Weights, gradients
at their peak and optimizer state are exact (tests/trainer/test_plan_vs_trainer.py holds them to
the bytes the trainer holds); buffers, activations, logits and the CUDA overhead are estimates
(docs/plan.md). No torch here: `ft submit` calls `refusals` and `warnings` for every job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ftcore import arch, families, policy
from ftcore.errors import UserError
from ftcore.policy import DTYPE_BYTES, Decision, Topology
from ftcore.schema import Job
from launcher import datarows, modelconfig

GIB = 2**30
OVERHEAD_GIB = 3.0  # CUDA context, NCCL and cuBLAS buffers, allocator fragmentation
# Weights read at start-up, per node: a parallel filesystem's share for one client (an assumption,
# said where it is used; local NVMe reads several times faster).
READ_GB_PER_S = 2.0
MODEL_STATE = ("weights", "gradients", "optimizer")
Dims = arch.Dims


def model_dims(job: Job) -> arch.Dims:
    """The model's shapes from its config.json (`launcher.modelconfig`), else a guess from
    `model.parameters_b` that says why the config could not be read."""
    found = modelconfig.find(job)
    if found.config is not None:
        return arch.dims_from_config(found.config, found.source)
    if job.model.parameters_b:
        return arch.dims_from_size(job.model.parameters_b, why=found.source)
    raise UserError(f"cannot size {job.model.path}: {found.source}",
                    hint="set model.parameters_b=<billions> for a rough plan")


# --- what is trained -----------------------------------------------------------------------------


def lora_tensors(decision: Decision, dims: arch.Dims, r: int) -> list[arch.Tensor]:
    """The adapters peft creates: A (r × in) and B (out × r) for each adapted layer, and with
    DoRA its magnitude (one per output row); for each adapted 3-D expert parameter
    A ((r·experts) × in) and B (out × (r·experts))."""
    found = []
    for name in decision.lora_targets or ():
        fan_in, fan_out = dims.shape_of(name)
        found += [arch.Tensor(f"{name}.lora_A.weight", r, fan_in, "lora"),
                  arch.Tensor(f"{name}.lora_B.weight", fan_out, r, "lora")]
        if decision.peft_method == "dora":
            found.append(arch.Tensor(f"{name}.lora_magnitude_vector", fan_out, 1, "lora"))
    experts = {e.name: e for e in dims.experts()}
    for name in decision.lora_parameters or ():
        e = experts[name]
        found += [arch.Tensor(f"{name}.lora_A.weight", r * e.experts, e.fan_in, "lora"),
                  arch.Tensor(f"{name}.lora_B.weight", e.fan_out, r * e.experts, "lora")]
    return found


def lora_params(job: Job, dims: arch.Dims) -> int:
    """r × (in + out) for each adapted layer, r × experts × (in + out) for each adapted expert weight."""
    if job.peft is None:
        return 0
    return sum(t.numel for t in lora_tensors(policy.decide(job, dims=dims), dims, job.peft.dim))


def lora_activations(job: Job, decision: Decision, dims: arch.Dims) -> int:
    """Elements per token the adapters add to what autograd keeps, in the compute dtype (the
    policy computes them there, `Decision.adapter_compute`): lora_A's output (r) per adapted
    layer, and with dropout the masked copy of its input. Checkpointed: one layer's worth."""
    if not decision.lora or decision.lora_targets is None:
        return 0
    per_layer: dict[str, int] = {}
    for name in decision.lora_targets:
        fan_in, _ = dims.shape_of(name)
        layer = name.split(".layers.")[-1].split(".", 1)[0] if ".layers." in name else name
        per_layer[layer] = per_layer.get(layer, 0) + job.peft.dim + (fan_in if job.peft.dropout else 0)
    if not per_layer:
        return 0
    return max(per_layer.values()) if decision.activation_checkpointing else sum(per_layer.values())


# --- the estimate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    bytes: float
    how: str
    exact: bool = False  # priced tensor by tensor from the decision (the test holds it to the trainer's)
    on_device: bool = True  # False: host memory (CPU offload), not counted against the GPU


@dataclass(frozen=True)
class Estimate:
    rows: tuple[Row, ...]
    dims: arch.Dims
    decision: Decision
    params: int
    trainable: int
    gpu_gib: float
    rank: int = 0
    notes: tuple[str, ...] = field(default=())
    rows_from_data: bool = False  # activations priced from the data's rows, not the worst case

    @property
    def fixed(self) -> float:
        """What the device holds whatever the data: everything but activations and logits."""
        return sum(r.bytes for r in self.rows if r.on_device and r.name not in ("activations", "logits"))

    @property
    def topology(self) -> Topology:
        return self.decision.topology

    @property
    def world_size(self) -> int:
        return self.topology.world

    @property
    def num_nodes(self) -> int:
        return self.topology.num_nodes

    @property
    def devices(self) -> int:
        return self.topology.devices

    @property
    def strategy(self) -> str:
        return self.topology.strategy

    @property
    def on_gpu(self) -> bool:
        return self.topology.on_gpu

    @property
    def total(self) -> float:
        """What one process holds on its device at the peak (host-memory rows aside)."""
        return sum(r.bytes for r in self.rows if r.on_device)

    @property
    def model_state(self) -> float:
        """Weights, gradients and optimizer state: what does not depend on the batch."""
        return sum(r.bytes for r in self.rows if r.name in MODEL_STATE)

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_gib * GIB

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params, "trainable": self.trainable, "dims_source": self.dims.source,
            "layout": {"num_nodes": self.num_nodes, "devices": self.devices, "world_size": self.world_size,
                       "strategy": self.strategy, "accelerator": self.topology.accelerator},
            "rank": self.rank,
            "decision": {"compute": self.decision.compute, "frozen": self.decision.frozen,
                         "trained": self.decision.trained, "gradients": self.decision.grad,
                         "optimizer": self.decision.optim, "grad_sync": self.decision.grad_sync,
                         "quantization": self.decision.quantization, "cpu_offload": self.decision.cpu_offload,
                         "activation_checkpointing": self.decision.activation_checkpointing,
                         "lora_targets": list(self.decision.lora_targets or []) or None,
                         "lora_parameters": list(self.decision.lora_parameters or []) or None,
                         "adapter_compute": self.decision.adapter_compute},
            "model": {"model_type": self.dims.model_type, "exact": self.dims.exact, "source": self.dims.source},
            "rows": [{"name": r.name, "bytes": r.bytes, "gib": r.bytes / GIB, "how": r.how, "exact": r.exact,
                      "on_device": r.on_device} for r in self.rows],
            "total_gib": self.total / GIB, "gpu_gib": self.gpu_gib, "fits": self.fits if self.on_gpu else None,
            "notes": list(self.notes), "rows_from_data": self.rows_from_data,
        }


def count(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e8 else f"{n / 1e6:.3g}M" if n >= 1e5 else f"{n:,.0f}"


def settle(job: Job, gpu_gib: float | None = None, num_nodes: int | None = None, devices: int | None = None,
           strategy: str | None = None) -> tuple[Job, str | None]:
    """`job` with `model.activation_checkpointing: auto` decided, and the line that says how: on
    where the job does not fit its GPUs without it (CPU jobs: off, there is no GPU to fit)."""
    if job.model.activation_checkpointing != "auto":
        return job, None
    off = _with(job, model={"activation_checkpointing": False})
    if job.trainer.accelerator != "gpu":
        return off, None
    without = estimate(off, gpu_gib, num_nodes, devices, strategy)
    if without.fits:
        return off, f"activation checkpointing: auto → off (the job fits without it: {without.total / GIB:.1f} GiB)"
    on = _with(job, model={"activation_checkpointing": True})
    withit = estimate(on, gpu_gib, num_nodes, devices, strategy)
    return on, (f"activation checkpointing: auto → on ({without.total / GIB:.1f} GiB per GPU without it, "
                f"{withit.total / GIB:.1f} GiB with it; model.activation_checkpointing=false turns it off)")


def estimate(job: Job, gpu_gib: float | None = None, num_nodes: int | None = None,
             devices: int | None = None, strategy: str | None = None, rank: int = 0) -> Estimate:
    """Peak memory of training process `rank` of `job`, optionally on another layout or strategy:
    one row per memory term, model state exact, the rest estimated.

    Raises UserError when the model cannot be sized or (for a named architecture) a LoRA
    glob matches no layer.
    """
    job, settled = settle(job, gpu_gib, num_nodes, devices, strategy)
    gpu_gib = gpu_gib or job.trainer.gpu_memory_gib
    topology = Topology.of(job, num_nodes, devices, strategy)
    dims = model_dims(job)
    decision = policy.decide(job, topology, dims)
    priced = _Pricing(job, topology, dims, decision, rank, datarows.measure(job))
    notes: list[str] = []
    if not dims.exact:
        notes.append(f"model shape: {dims.source}. LoRA sizes and activations are rough, and a guess "
                     "never refuses a submission")
    if decision.lora and decision.lora_targets is None:
        notes.append("LoRA targets are resolved by the trainer (the architecture's layer names are not known here)")
    if job.model.init == "pretrained":
        notes.append(startup_reads(job, topology, priced.base, priced.local))
    notes.append(priced.data_rows.describe(job) + f"; the largest micro batch: {priced.tokens} tokens"
                 if priced.data_rows else
                 f"rows: the worst case, micro batch {job.data.micro_batch_size} × max_seq_length "
                 f"{job.data.max_seq_length} (the data is not readable here)")
    if settled:
        notes.append(settled)
    rows = [_weights(priced), _gradients(priced), _optimizer(priced), *_reference(priced),
            *_transient_weights(priced), _activations(priced), *_attention_scores(priced, notes), _logits(priced)]
    if topology.on_gpu:
        rows.append(Row("CUDA/NCCL overhead", OVERHEAD_GIB * GIB, "fixed"))
    params = dims.params if dims.exact or not job.model.parameters_b else round(job.model.parameters_b * 1e9)
    return Estimate(tuple(rows), dims, decision, params, priced.n_trained, gpu_gib, rank, tuple(notes),
                    priced.data_rows is not None)


@dataclass(frozen=True)
class _Pricing:
    """What every memory term of one rank is priced from."""

    job: Job
    topology: Topology
    dims: arch.Dims
    decision: Decision
    rank: int
    data_rows: "datarows.Rows | None"  # the data's row lengths, where the data is readable here

    @property
    def world(self) -> int:
        """The ranks a tensor is sharded over (1: each rank holds all of it)."""
        return self.topology.world if self.decision.sharded else 1

    @property
    def compute_bytes(self) -> int:
        return DTYPE_BYTES[self.decision.compute]

    @property
    def sequences(self) -> int:
        """Sequences per example in one forward: a preference pair is two (chosen and rejected)."""
        return 2 if self.job.objective.pairs else 1

    @property
    def tokens(self) -> int:
        """Tokens of the largest micro batch: from the data's rows where they are known."""
        return micro_batch_tokens(self.job, self.data_rows) * self.sequences

    @cached_property
    def base(self) -> list[arch.Tensor]:
        return self.dims.tensors()

    @cached_property
    def trained(self) -> list[arch.Tensor]:
        decision = self.decision
        return lora_tensors(decision, self.dims, self.job.peft.dim) if decision.lora else self.base

    @cached_property
    def n_trained(self) -> int:
        return sum(t.numel for t in self.trained)

    @property
    def shard(self) -> str:
        return f" / {self.world} ranks" if self.decision.sharded and self.world > 1 else ""

    @property
    def on_device(self) -> bool:
        return not self.decision.cpu_offload  # FSDP2's CPU offload keeps the model state in host memory

    def local(self, tensor: arch.Tensor) -> int:
        """Values of `tensor` on this rank: its shard under FSDP2, all of it otherwise."""
        if self.decision.sharded:
            return policy.shard_rows(tensor.rows, self.world, self.rank) * tensor.cols
        return tensor.numel

    def is_nf4(self, tensor: arch.Tensor) -> bool:
        return self.decision.lora and tensor.kind == "linear" and self.decision.stores_nf4(tensor.rows, tensor.cols)


def _weights(priced: _Pricing) -> Row:
    """Frozen base (NF4 where quantized) and trained weights on this rank (exact)."""
    decision, c = priced.decision, priced.compute_bytes
    weights, how = 0, []
    if decision.lora:
        nf4 = [t for t in priced.base if priced.is_nf4(t)]
        plain = [t for t in priced.base if t not in set(nf4)]
        if nf4:
            weights += sum(policy.nf4_bytes(priced.local(t), c) for t in nf4)
            how.append(f"{count(sum(t.numel for t in nf4))} frozen NF4 ({len(nf4)} projections, ≈0.52 B)")
        weights += sum(priced.local(t) for t in plain) * DTYPE_BYTES[decision.frozen]
        how.append(f"{count(sum(t.numel for t in plain))} frozen × {DTYPE_BYTES[decision.frozen]} B ({decision.frozen})")
    weights += sum(priced.local(t) for t in priced.trained) * DTYPE_BYTES[decision.trained]
    how.append(f"{count(priced.n_trained)} trained × {DTYPE_BYTES[decision.trained]} B ({decision.trained}"
               + (", master weights" if decision.master_weights else "") + ")")
    return Row("weights", weights, " + ".join(how) + priced.shard, True, priced.on_device)



def _reference(priced: _Pricing) -> list[Row]:
    """DPO with full weights: a frozen copy of the base, sharded like the policy, never trained
    (LoRA's reference is the base itself with the adapters switched off: no row)."""
    decision = priced.decision
    if decision.reference is None or decision.reference == policy.ADAPTERS_OFF:
        return []
    size = DTYPE_BYTES[decision.reference]
    return [Row("reference", sum(priced.local(t) for t in priced.base) * size,
                f"DPO's frozen copy of the base: {count(sum(t.numel for t in priced.base))} × {size} B "
                f"({decision.reference}){priced.shard}", False, priced.on_device)]


def _gradients(priced: _Pricing) -> Row:
    """The trained weights' gradients at their peak (exact)."""
    decision, n_trained = priced.decision, priced.n_trained
    g = DTYPE_BYTES[decision.grad]
    if decision.grads_unsharded:
        why = ("replicated, all-reduced once per step" if not decision.sharded else
               f"unsharded until the reduce-scatter after micro batch {decision.accum_steps}")
        return Row("gradients", n_trained * g, f"{count(n_trained)} × {g} B ({decision.grad}), {why}", True,
                   priced.on_device)
    grads = sum(priced.local(t) for t in priced.trained) * g
    when = "reduce-scattered after every micro batch" if decision.accum_steps > 1 else "one micro batch per step"
    return Row("gradients", grads, f"{count(n_trained)} × {g} B ({decision.grad}){priced.shard}, {when}", True,
               priced.on_device)


def _optimizer(priced: _Pricing) -> Row:
    """Adam's two moments of every trained value on this rank (exact)."""
    o = DTYPE_BYTES[priced.decision.optim]
    return Row("optimizer", 2 * sum(priced.local(t) for t in priced.trained) * o,
               f"Adam: 2 moments × {count(priced.n_trained)} × {o} B ({priced.decision.optim}){priced.shard}",
               True, priced.on_device)


def _transient_weights(priced: _Pricing) -> list[Row]:
    """Weights gathered or dequantized for the layer being computed (an estimate)."""
    decision, dims, c = priced.decision, priced.dims, priced.compute_bytes

    def stored(t: arch.Tensor) -> float:
        return policy.nf4_bytes(t.numel, c) if priced.is_nf4(t) else t.numel * c

    layer = dims.largest_layer()
    largest_nf4 = max((t.numel for t in layer if priced.is_nf4(t)), default=0)
    if decision.sharded:
        # The layer being computed and the prefetched next one, gathered (NF4 stays 4-bit in
        # the all-gather), and the root unit (embeddings, head, final norm), which FSDP2 keeps
        # unsharded through the step. Full SFT adds the unsharded gradient of the largest unit,
        # in the compute dtype and as the fp32 copy that is reduce-scattered.
        layer_bytes = sum(stored(t) for t in layer)
        gathered = 2 * layer_bytes + dims.outer_params * c + largest_nf4 * c
        how = f"2 layers × {layer_bytes / 2**20:.0f} MiB + root {count(dims.outer_params)} × {c} B"
        if largest_nf4:
            how += f" + one dequantized projection ({count(largest_nf4)} × {c} B)"
        if not decision.lora:
            unit = max(dims.layer_params, dims.outer_params)
            gathered += unit * (c + 4)
            how += f" + gradient of {count(unit)} × ({c} + 4) B"
        return [Row("FSDP2 buffers", gathered, how)]
    if largest_nf4:
        return [Row("NF4 dequantized weight", largest_nf4 * c,
                    f"the projection being computed, {count(largest_nf4)} × {c} B (freed after its matmul)")]
    return []


def _activations(priced: _Pricing) -> Row:
    """What autograd keeps for backward, per micro batch (an estimate)."""
    job, decision, c = priced.job, priced.decision, priced.compute_bytes
    tokens = priced.tokens
    elements = priced.dims.activations_per_token(decision.activation_checkpointing)
    how = (f"{tokens} tokens × {elements:,} elements × {c} B "
           + ("(each layer's input, one layer recomputed)" if decision.activation_checkpointing
              else "(every layer's, per family)"))
    adapter = lora_activations(job, decision, priced.dims)
    if adapter:
        elements += adapter
        how += f" + LoRA {adapter:,} (r per adapted layer" + (", dropout's masked inputs" if job.peft.dropout else "") + ")"
    return Row("activations", tokens * elements * c, how)


def _attention_scores(priced: _Pricing, notes: list[str]) -> list[Row]:
    """Which kernel ft's padding-free attention runs on this job's devices (a note); where no
    fused kernel can, the [H,T,T] scores SDPA's math backend keeps for backward (a row)."""
    job, decision, dims = priced.job, priced.decision, priced.dims
    kernel = attention_kernel(job, priced.topology, decision)
    if kernel is None:
        return []
    if kernel.fused:
        notes.append(f"{kernel.describe()}; the node's torch and flash-attn pick among the fused ones "
                     "(docs/architecture.md)")
        return []
    notes.append(kernel.describe())
    kept = 1 if decision.activation_checkpointing else dims.layers
    examples = job.data.micro_batch_size * priced.sequences
    scores = kept * dims.heads * examples * job.data.max_seq_length ** 2
    return [Row("attention scores", scores * families.SCORE_BYTES,
                f"SDPA's math backend: {kept} layer(s) × {dims.heads} heads × {examples} "
                f"examples × {job.data.max_seq_length}² × {families.SCORE_BYTES} B (fp32)")]


def _logits(priced: _Pricing) -> Row:
    """One loss chunk's logits, in the compute dtype and as fp32 with its gradient (an estimate)."""
    c, vocab = priced.compute_bytes, priced.dims.vocab
    loss_tokens = min(priced.tokens, policy.LOSS_CHUNK_TOKENS)
    return Row("logits", loss_tokens * vocab * (c + 8), f"{loss_tokens} tokens × vocab {vocab} × ({c} + 4 + 4) B")


HOST_PER_RANK_GIB = 8.0  # a training process's own host memory (Python, torch, CUDA context, loading buffers)
_MEM = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # sbatch --mem units (default MB)


def slurm_mem_bytes(mem: str | None) -> float | None:
    """sbatch's --mem as bytes; None where it is not given or is 0 (all of the node's)."""
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", (mem or "").strip().upper())
    if not match or float(match.group(1)) == 0:
        return None
    return float(match.group(1)) * _MEM[match.group(2)]


def host_per_node(est: Estimate) -> float:
    """Host memory one node's ranks hold: what CPU offload keeps there, and each process's own."""
    offloaded = sum(r.bytes for r in est.rows if not r.on_device)
    return est.devices * (offloaded + HOST_PER_RANK_GIB * GIB)


def host_lines(job: Job, est: Estimate) -> list[str]:
    """`ft plan`'s host-memory line for a GPU job with CPU offload, checked against slurm.mem."""
    if not est.on_gpu or all(r.on_device for r in est.rows):
        return []
    offloaded = sum(r.bytes for r in est.rows if not r.on_device)
    node = host_per_node(est)
    line = (f"host memory: {offloaded / GIB:.1f} GiB offloaded per rank × {est.devices} ranks + "
            f"{HOST_PER_RANK_GIB:g} GiB per process ≈ {node / GIB:.0f} GiB per node")
    asked = slurm_mem_bytes(job.slurm.mem)
    if asked is None:
        return [line + f" (slurm.mem {'0: all of the node' if job.slurm.mem else 'unset: the site default'}; "
                f"slurm.mem={-(-node // GIB):.0f}G asks for it)"]
    return [line + (f", within slurm.mem={job.slurm.mem}" if node <= asked else
                    f": more than slurm.mem={job.slurm.mem}")]


def micro_batch_tokens(job: Job, rows: "datarows.Rows | None") -> int:
    """Tokens in the largest micro batch: from the data's rows where they are known, else
    micro batch × max_seq_length."""
    if rows is None:
        return job.data.micro_batch_size * job.data.max_seq_length
    return rows.micro_batch_tokens(job, attention(job).padding_free)


# --- time ---------------------------------------------------------------------------------------

# Dense bf16 peak of one GPU (TFLOPS, the vendors' figures without sparsity), by trainer.gpu_type.
PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "gh200": 989.0, "b200": 2250.0, "a100": 312.0, "l40s": 362.0,
               "l40": 181.0, "a10": 125.0, "a40": 150.0, "v100": 125.0}
ASSUMED_GPU = "h100"  # where trainer.gpu_type names none
MFU = 0.35  # model FLOPs utilisation assumed: what fine-tuning at these batch sizes reaches, roughly
MFU_NF4 = 0.20  # NF4 weights are dequantized in every matmul (torchao): slower
TIME_MARGIN = 1.5  # slurm.time auto = estimate × this + TIME_PAD_S: an estimate, not a promise
TIME_PAD_S = 600
DEFAULT_TIME = "01:00:00"  # slurm.time auto where nothing can be estimated


@dataclass(frozen=True)
class Timing:
    step_s: float
    steps: int | None  # None: epochs over data not readable here
    total_s: float | None
    how: str

    def limit(self) -> str | None:
        """slurm.time from the estimate: × TIME_MARGIN + TIME_PAD_S, rounded up to 5 minutes."""
        if self.total_s is None:
            return None
        minutes = -(-(self.total_s * TIME_MARGIN + TIME_PAD_S) // 300) * 5
        days, minutes = divmod(int(minutes), 24 * 60)
        return (f"{days}-" if days else "") + f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def timing(job: Job, est: Estimate) -> Timing | None:
    """Step and total time from the FLOPs at an assumed MFU (GPU jobs; None on CPUs). Per token:
    full training 6N (forward 2N, backward 4N), LoRA 4N + 6n (the frozen base's forward and its
    input gradients, the adapters' n in full), +2N recomputed with activation checkpointing, and
    attention's 6·L·h·T for a row of T tokens (causal: half of the scores)."""
    if not est.on_gpu:
        return None
    dims, d = est.dims, est.decision
    n = est.params
    per_token = (4 * n + 6 * est.trainable) if d.lora else 6 * n
    if d.activation_checkpointing:
        per_token += 2 * n
    rows = datarows.measure(job)
    row_tokens = rows.mean_tokens(job.data.max_seq_length) if rows else float(job.data.max_seq_length)
    per_token += 6 * dims.layers * dims.hidden * row_tokens
    tokens = job.data.global_batch_size * row_tokens
    gpu = (job.trainer.gpu_type or ASSUMED_GPU).lower()
    peak = PEAK_TFLOPS.get(gpu, PEAK_TFLOPS[ASSUMED_GPU])
    mfu = MFU_NF4 if d.quantization else MFU
    step_s = per_token * tokens / (est.world_size * peak * 1e12 * mfu)
    steps = job.trainer.max_steps
    if steps is None and rows is not None and rows.complete:
        train_rows = rows.records * (1 - (0 if job.data.val_path else job.data.val_fraction))
        steps = job.trainer.num_epochs * max(1, -(-int(train_rows) // job.data.global_batch_size))
    total = steps * step_s if steps is not None else None
    named = gpu if gpu in PEAK_TFLOPS else f"{ASSUMED_GPU} (trainer.gpu_type={gpu} unknown here)"
    if not job.trainer.gpu_type:
        named = f"{ASSUMED_GPU} (trainer.gpu_type names none)"
    what = ("4N + 6n (LoRA)" if d.lora else "6N") + (" + 2N recomputed" if d.activation_checkpointing else "")
    rows_how = "mean row from the data" if rows else "every row max_seq_length, the data not readable here"
    how = (f"time: ≈ {_duration(step_s)} per step ({what} + attention FLOPs per token, {tokens:,.0f} tokens per step "
           f"({rows_how}), at {mfu:.0%} MFU of {est.world_size} × {named} at {peak:g} TFLOPS bf16"
           + ("; MoE experts all counted: an upper bound" if dims.expert_params else "") + ")")
    if total is not None:
        how += f" × {steps} steps ≈ {_duration(total)}"
    else:
        how += "; the number of steps is not known here (epochs over data not readable here)"
    return Timing(step_s, steps, total, how)


def time_lines(job: Job, est: Estimate) -> list[str]:
    """What `ft plan` prints about time (the estimate, what slurm.time becomes) and host memory."""
    timed = timing(job, est)
    _, said = settle_time(job)
    return [*host_lines(job, est), *(line for line in (timed.how if timed else None, said) if line)]


def timing_dict(job: Job, timed: Timing | None) -> dict[str, Any] | None:
    if timed is None:
        return None
    return {"step_s": timed.step_s, "steps": timed.steps, "total_s": timed.total_s, "how": timed.how,
            "slurm_time": settle_time(job)[0].slurm.time}


def settle_time(job: Job) -> tuple[Job, str | None]:
    """`job` with slurm.time auto set from `timing` (or DEFAULT_TIME), and the line saying so."""
    if job.slurm.time != "auto":
        return job, None
    try:
        timed = timing(job, estimate(job))
    except UserError:
        timed = None
    limit = timed.limit() if timed else None
    if limit is None:
        why = "a CPU job" if job.trainer.accelerator != "gpu" else "no estimate of the whole run"
        return _with(job, slurm={"time": DEFAULT_TIME}), f"slurm.time: auto → {DEFAULT_TIME} ({why}; set slurm.time)"
    return (_with(job, slurm={"time": limit}),
            f"slurm.time: auto → {limit} (the estimate {_duration(timed.total_s)} × {TIME_MARGIN:g} + "
            f"{TIME_PAD_S // 60} min; set slurm.time to choose)")


def startup_reads(job: Job, topology: Topology, base: list, local) -> str:
    """How much of the weights files each rank reads at start-up, and how long that takes at
    READ_GB_PER_S per node. Meta-device init reads each rank's own rows (an NF4 projection too);
    otherwise every rank loads the whole model."""
    stored = DTYPE_BYTES["bf16"]  # checkpoints on the hub are bf16 (fp32 ones read twice as much)
    whole = sum(t.numel for t in base) * stored
    per_rank = sum(local(t) for t in base) * stored if job.model.meta_init else whole
    per_node = per_rank * topology.devices
    seconds = per_node / (READ_GB_PER_S * 1e9)
    how = "its own rows (meta-device init)" if job.model.meta_init else "the whole model"
    return (f"start-up: each rank reads {per_rank / GIB:.1f} GiB of weights, {how}; {per_node / GIB:.0f} GiB per node, "
            f"about {_duration(seconds)} at {READ_GB_PER_S:g} GB/s per node")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# --- layouts and levers --------------------------------------------------------------------------


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


def smallest_fit(job: Job, gpu_gib: float | None = None, gpus_per_node: int = 8) -> Fit | None:
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


def _with(job: Job, **changes: dict[str, Any]) -> Job:
    """`job` with some sections' fields changed (no re-validation: only valid levers are tried)."""
    return job.model_copy(update={section: getattr(job, section).model_copy(update=fields)
                                  for section, fields in changes.items()})


def levers(job: Job, gpu_gib: float | None = None) -> list[str]:
    """What else would make the job fit on its own layout, each priced by the same plan."""
    tries: list[tuple[str, Job]] = []
    if job.peft is not None and not job.model.quantization:
        tries.append(("model.quantization=nf4", _with(job, model={"quantization": "nf4"})))
    if job.strategy == "fsdp2" and not job.model.cpu_offload:
        tries.append(("model.cpu_offload=true", _with(job, model={"cpu_offload": True})))
    if job.model.activation_checkpointing is not True:
        tries.append(("model.activation_checkpointing=true", _with(job, model={"activation_checkpointing": True})))
    if job.data.max_seq_length >= 512:
        shorter = job.data.max_seq_length // 2
        tries.append((f"data.max_seq_length={shorter}", _with(job, data={"max_seq_length": shorter})))
    found = []
    for lever, changed in tries:
        est = estimate(changed, gpu_gib)
        found.append(f"{lever}: {est.total / GIB:.1f} GiB" + (" (fits)" if est.fits else ""))
    return found


def advice(job: Job, est: Estimate) -> list[str]:
    """For a job that does not fit: the smallest layout that does, and the levers."""
    fit = smallest_fit(job, est.gpu_gib)
    lines = [f"smallest allocation that fits: {fit.describe(job)}" if fit else
             "no allocation up to 64 nodes fits"]
    found = levers(job, est.gpu_gib)
    if found:
        lines.append("levers on this layout: " + "; ".join(found))
    return lines


def verdict(est: Estimate, job: Job) -> list[str]:
    """The lines `ft plan` prints under its table."""
    if not est.on_gpu:
        return [f"total ≈ {est.total / 2**20:.0f} MiB in the training process (CPU job: no GPU to fit)"]
    where = f"{est.num_nodes} node(s) × {est.devices} GPU(s) of {est.gpu_gib:g} GiB"
    if est.fits:
        return [f"total ≈ {est.total / GIB:.1f} GiB per GPU: fits {where}"]
    return [f"total ≈ {est.total / GIB:.1f} GiB per GPU: does NOT fit {where}", *advice(job, est)]


def attention(job: Job) -> families.AttentionPath:
    """The attention path the trainer will build for this model (ftcore.families decides for both)."""
    return families.attention_path(job, modelconfig.find(job).config)


def attention_kernel(job: Job, topology: Topology, decision: Decision) -> families.Kernel | None:
    """The kind of kernel ft's padding-free attention gets on a GPU (ftcore.families decides for
    both sides): fused, unless no fused SDPA takes the model's heads in the compute dtype. Which
    fused one (flash-attn, torch's varlen_attn, SDPA per example) the node's packages decide."""
    found = modelconfig.find(job).config
    if not topology.on_gpu or attention(job).name != families.VARLEN:
        return None
    widths = families.head_dims({**(found or {}), **(job.model.config or {})})
    if widths is None:
        return None
    kernel = families.varlen_kernel("cuda", decision.compute, flash_attn=False, torch_varlen=None,
                                    sdpa=families.sdpa_fused(decision.compute, widths[0]))
    if kernel.fused:
        return families.Kernel("fused", False, "flash-attn, torch varlen_attn or SDPA per example: no [heads, L, L] "
                               "scores kept")
    return kernel


def refusals(job: Job, gpu_gib: float | None = None, force: bool = False) -> list[str]:
    """Why `ft submit` must not queue this job, as far as the plan knows: LoRA globs that match
    no layer of a known architecture, and (unless `force`) a GPU job that does not fit. A plan
    from a guessed shape refuses nothing (`warnings` says so). Also what the model's own
    config.json rules out (ftcore.families: packing across a sliding window, ...)."""
    config = modelconfig.find(job).config
    found = families.problems(job, config) if config is not None else []
    if found:
        return found
    try:
        est = estimate(job, gpu_gib)
    except UserError as err:
        if any("cannot size" in p for p in err.problems):
            return []  # a model ft cannot size: nothing known against it
        return err.lines()
    asked = slurm_mem_bytes(job.slurm.mem)
    if not force and est.on_gpu and asked is not None and host_per_node(est) > asked and est.dims.exact:
        return [f"this job needs about {host_per_node(est) / GIB:.0f} GiB of host memory per node (CPU offload: "
                f"`ft plan` shows it), more than slurm.mem={job.slurm.mem}; ask for more, or use more nodes "
                "(--force submits it anyway)"]
    if force or not est.on_gpu or est.fits or not est.dims.exact:
        return []
    if not est.rows_from_data and est.fixed <= est.gpu_gib * GIB:
        return []  # priced at the worst case of rows it cannot see: `warnings` says so
    where = f"{job.trainer.num_nodes} node(s) × {job.trainer.devices} GPU(s)"
    return [f"this job needs about {est.total / GIB:.0f} GiB per GPU, more than the {est.gpu_gib:g} GiB of {where} "
            "(trainer.gpu_memory_gib; `ft plan` shows the breakdown; --force submits it anyway)", *advice(job, est)]


def warnings(job: Job) -> list[str]:
    """What `ft submit` says but does not refuse: a fit check from a guessed model shape."""
    try:
        est = estimate(job)
    except UserError as err:
        return [f"the fit check was skipped: {p}" for p in err.problems if "cannot size" in p]
    if est.dims.exact and est.on_gpu and not est.fits and not est.rows_from_data:
        return [f"at the worst case of its rows (every one max_seq_length={job.data.max_seq_length} tokens) this "
                f"job needs about {est.total / GIB:.0f} GiB per GPU, more than {est.gpu_gib:g} GiB; the data is "
                "not readable here to price its real rows, so this is not refused (`ft plan` shows the levers; "
                "a local data file prices real rows)"]
    if est.dims.exact or not est.on_gpu:
        return []
    verdict = "fits" if est.fits else f"would NOT fit {est.gpu_gib:g} GiB"
    return [f"the fit check is {est.dims.source}: about {est.total / GIB:.0f} GiB per GPU, {verdict}; not "
            "refused. Make the model's config.json readable here (a local folder, `ft stage`, or the hub) for an "
            "exact check"]
