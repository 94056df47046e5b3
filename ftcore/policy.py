"""The memory and precision policy: what the trainer builds and `ft plan` prices.

    decision = policy.decide(job)                        # the job's own topology
    decision = policy.decide(job, Topology(1, 8, "fsdp2", "gpu"), dims)   # another one, for the planner

One owner for each rule both halves need: the trainer turns a `Decision` into tensors
(trainer/model.py) and the planner multiplies it out (launcher/plan.py); neither decides a
dtype, a residency or a target list by itself, so they cannot drift apart. Torch-free.

The rules (compute dtype, what LoRA and full SFT store in which dtype, NF4, gradient residency
under FSDP2) and why each is so: docs/plan.md, "The decision".
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

from ftcore import dtypes, families
from ftcore.errors import UserError

# Above this many answer tokens the vocabulary projection runs in checkpointed chunks, so the
# (tokens × vocab) fp32 logits never exist all at once: 8k tokens × 128k vocab is 4 GiB.
LOSS_CHUNK_TOKENS = 4096

DTYPE_BYTES = dtypes.BYTES
ADAPTERS_OFF = "adapters off"  # `Decision.reference` under LoRA: the base itself is DPO's reference


# --- LoRA targets --------------------------------------------------------------------------------


def glob_matches(name: str, globs: Iterable[str]) -> bool:
    """Whether a module named `name` (`model.layers.0.self_attn.q_proj`) is selected by any glob.

    A glob selects a module when it equals the module's last name component (`q_proj`), or
    matches its full name or its last component, where `*` matches any run of characters
    (dots included), `?` one character, and — as in NeMo AutoModel, whose `"*.proj"` means
    "every projection layer" — a `.` also matches any one character. A leading `*.` may also
    match nothing, so `*.lm_head` selects the top-level `lm_head`. So `*_proj`, `*.proj`,
    `q_proj`, `*.layers.0.*.q_proj`, `model.layers.*.mlp.*` and `*.lm_head` all read as users
    of those tools expect.
    """
    last = name.rsplit(".", 1)[-1]
    for glob in globs:
        for form in (glob, glob[2:]) if glob.startswith("*.") else (glob,):
            pattern = form.replace(".", "?")
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(last, pattern):
                return True
    return False


def lora_targets(linear_names: list[str], head_name: str | None, peft, model_type: str | None = None) -> list[str]:
    """The linear layers a `peft` section adapts, from a model's linear-layer names.

    Unset `target_modules`: the family's attention and MLP projections (`ftcore.families`; a
    name this model lacks is skipped), or every linear layer but the head for a family ft does
    not know. `match_all_linear` takes every linear layer but the output head (NeMo AutoModel's
    takes the head too; an adapter on a 128k-vocabulary head is rarely wanted and breaks vLLM
    serving). "Linear" includes GPT-2's Conv1D. A glob that matches no linear layer is an error,
    not silence; so is excluding everything.
    """
    family = families.get(model_type)
    if peft.match_all_linear or (peft.target_modules is None and family is None):
        chosen = [n for n in linear_names if n != head_name]
    elif peft.target_modules is None:
        chosen = [n for n in linear_names if n != head_name and n.rsplit(".", 1)[-1] in family.targets]
        if not chosen:
            raise UserError(f"none of {family.name}'s usual projections "
                            f"({', '.join(family.targets)}) is in this model: set peft.target_modules")
    else:
        chosen, unmatched = [], []
        for glob in peft.target_modules:
            hits = [n for n in linear_names if glob_matches(n, [glob])]
            if not hits:
                unmatched.append(glob)
            chosen += [n for n in hits if n not in chosen]
        if unmatched:
            kinds = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
            raise UserError(
                f"peft.target_modules {unmatched} match no linear layer of this model. "
                f"Its linear layers are named like: {', '.join(kinds[:12])} "
                f"(e.g. {linear_names[0] if linear_names else 'none'})",
                hint=(f"{family.name}'s experts are 3-D weights ({', '.join(family.experts)}), not linear "
                      "layers: peft.experts=true adapts them") if family and family.experts else None,
            )
    chosen = [n for n in chosen if not glob_matches(n, peft.exclude_modules)]
    unreachable = family.peft_unreachable if family else ()
    if unreachable:
        named = [n for n in chosen if n.rsplit(".", 1)[-1] in unreachable]
        if named and peft.target_modules is not None and not peft.match_all_linear:
            raise UserError(f"peft.target_modules names {named[0]}{' and more' if len(named) > 1 else ''}: peft reads "
                            f"{'/'.join(unreachable)} in {family.name} as the experts' names and "
                            f"would adapt the experts instead of these layers",
                            hint="leave them out of peft.target_modules (peft.experts adapts the experts)")
        chosen = [n for n in chosen if n not in named]
    if not chosen:
        raise UserError("peft: every targeted layer is excluded by peft.exclude_modules")
    return sorted(chosen)


def expert_targets(parameter_names: list[str], peft, model_type: str | None) -> list[str]:
    """The 3-D MoE expert parameters a `peft` section adapts (peft's `target_parameters`), by
    their module path and parameter name (`model.layers.0.mlp.experts.gate_up_proj`)."""
    family = families.get(model_type)
    suffixes = family.experts if family else ()
    if not families.adapts_experts(peft) or not suffixes:
        return []
    chosen = [n for n in parameter_names if n.rsplit(".", 1)[-1] in suffixes and ".experts." in n]
    return [n for n in chosen if not glob_matches(n, peft.exclude_modules)]


# --- NF4 (torchao's layout) ----------------------------------------------------------------------

# torchao's NF4Tensor quantizes blocks of 64 values (one scale each), and quantizes those
# scales again in blocks of 256 (double quantization).
NF4_BLOCK = 64
NF4_SCALER_BLOCK = 256


def nf4_fits(rows: int, cols: int, world: int = 1) -> bool:
    """Whether a (rows × cols) weight can be stored as NF4 and split into `world` FSDP2 shards.

    Every shard must hold whole scaler blocks (64 × 256 values) and an equal number of rows;
    a weight that does not stays in the compute dtype.
    """
    return rows % world == 0 and (rows * cols) % (NF4_BLOCK * NF4_SCALER_BLOCK * world) == 0


def nf4_bytes(numel: int, dtype_bytes: int) -> int:
    """Bytes of one NF4 tensor (or one shard) of `numel` values quantized from `dtype_bytes`:
    4-bit codes, an int8 scale per 64 values, a scale of scales per 64 × 256, and a mean and
    the 16-value code table in the source dtype."""
    return numel // 2 + numel // NF4_BLOCK + (numel // (NF4_BLOCK * NF4_SCALER_BLOCK) + 1 + 16) * dtype_bytes


# --- topology and decision -----------------------------------------------------------------------


def shard_span(rows: int, world: int, rank: int = 0) -> tuple[int, int]:
    """The rows [start, stop) of a tensor that rank `rank` holds when FSDP2 splits dim 0 like
    torch.chunk: ceil(rows / world) per rank, the last ranks short or empty."""
    per = -(-rows // world)
    start = min(rank * per, rows)
    return start, min(start + per, rows)


def shard_rows(rows: int, world: int, rank: int = 0) -> int:
    """How many rows of a tensor rank `rank` holds (`shard_span`)."""
    start, stop = shard_span(rows, world, rank)
    return stop - start


@dataclass(frozen=True)
class Topology:
    """Where the training processes run and how they split the model (not the job folder: ftcore.layout)."""

    num_nodes: int = 1
    devices: int = 1
    strategy: str = "ddp"  # "ddp" | "fsdp2"
    accelerator: str = "gpu"  # "gpu" | "cpu"

    @property
    def world(self) -> int:
        return self.num_nodes * self.devices

    @property
    def on_gpu(self) -> bool:
        return self.accelerator == "gpu"

    @classmethod
    def of(cls, job, num_nodes: int | None = None, devices: int | None = None,
           strategy: str | None = None) -> "Topology":
        """The job's own topology, or the same job on other nodes, devices or strategy."""
        return cls(num_nodes or job.trainer.num_nodes, devices or job.trainer.devices,
                   strategy or job.strategy, job.trainer.accelerator)


@dataclass(frozen=True)
class Decision:
    """What one training process stores, in what dtype, and where: the trainer builds this."""

    topology: Topology
    lora: bool
    peft_method: str | None  # "lora" | "dora" (a magnitude vector per adapted layer too); None: full SFT
    compute: str  # dtype of matmuls and activations
    frozen: str | None  # dtype of the frozen base (LoRA); its NF4-able projections are "nf4" when quantized
    trained: str  # dtype of the trained weights: the master weights when wider than `compute`
    grad: str  # dtype of gradients (as the optimizer sees them)
    optim: str  # dtype of Adam's two moments
    grad_sync: str  # "micro_batch": reduced after every micro batch; "step": once, after the last
    quantization: str | None  # "nf4": the frozen decoder projections, where nf4_fits
    cpu_offload: bool  # FSDP2 keeps the sharded weights, gradients and optimizer state in host memory
    activation_checkpointing: bool
    accum_steps: int  # micro batches per optimizer step on this topology
    lora_targets: tuple[str, ...] | None = field(default=None)  # resolved here for a named architecture
    lora_parameters: tuple[str, ...] | None = field(default=None)  # adapted 3-D expert weights (peft target_parameters)
    # DPO's reference model: None without one; under LoRA "adapters off" (the frozen base itself, no
    # copy); with full weights the dtype of the frozen copy of the base (the compute dtype).
    reference: str | None = field(default=None)

    @property
    def adapter_compute(self) -> str | None:
        """The dtype LoRA's adapter matmuls run in: the compute dtype, on every strategy."""
        return self.compute if self.lora else None

    @property
    def sharded(self) -> bool:
        return self.topology.strategy == "fsdp2"

    @property
    def master_weights(self) -> bool:
        """Full SFT keeping its trained weights wider than it computes (fp32 shards, bf16 matmuls)."""
        return not self.lora and DTYPE_BYTES[self.trained] > DTYPE_BYTES[self.compute]

    @property
    def grads_unsharded(self) -> bool:
        """Whether a rank holds the whole gradient at its peak (data parallel, or FSDP2
        deferring the reduce-scatter across more than one micro batch)."""
        return not self.sharded or (self.grad_sync == "step" and self.accum_steps > 1)

    def stores_nf4(self, rows: int, cols: int) -> bool:
        """Whether a frozen decoder projection of this shape is stored in NF4."""
        return self.quantization == "nf4" and nf4_fits(rows, cols, self.topology.world if self.sharded else 1)

    def describe(self) -> list[str]:
        """One line per decision, for `ft plan` and the trainer's first log lines."""
        lines = [f"compute in {self.compute}"]
        if self.lora:
            base = f"frozen base in {self.frozen}"
            if self.quantization:
                base += f", its decoder projections in {self.quantization.upper()} (torchao)"
            lines.append(base)
            adapters = "DoRA adapters (LoRA + a magnitude per output row)" if self.peft_method == "dora" else "LoRA adapters"
            lines.append(f"{adapters}, gradients and Adam moments in {self.trained}"
                         + (f", adapters computed in {self.adapter_compute}" if self.adapter_compute != self.trained else ""))
        else:
            lines.append(f"trained weights in {self.trained}" + (" (the master weights)" if self.master_weights else "")
                         + f", gradients in {self.grad}, Adam moments in {self.optim}")
        if self.sharded:
            lines.append("gradients reduce-scattered after every micro batch" if self.grad_sync == "micro_batch"
                         else f"gradients reduce-scattered once per step (after {self.accum_steps} micro batches)")
        else:
            lines.append("gradients all-reduced once per step")
        if self.reference == ADAPTERS_OFF:
            lines.append("DPO reference: the base with the adapters switched off (no copy)")
        elif self.reference is not None:
            lines.append(f"DPO reference: a frozen copy of the base in {self.reference}"
                         + (", sharded like the policy" if self.sharded else ""))
        if self.cpu_offload:
            lines.append("sharded weights, gradients and optimizer state in host memory (FSDP2 CPU offload)")
        if self.activation_checkpointing:
            lines.append("activations recomputed per decoder layer in backward")
        return lines


def compute_dtype(job, topology: Topology) -> str:
    """The dtype of matmuls and activations: `model.dtype` on GPUs, fp32 on CPUs (no fast bf16
    matmul there). Tests replace this function to run the GPU dtypes on a CPU."""
    return job.model.dtype if topology.on_gpu else "fp32"


def decide(job, topology: Topology | None = None, dims=None) -> Decision:
    """The decision for `job` on `topology` (default: its own). With `dims` (ftcore.arch.Dims) of
    a named architecture the LoRA targets are resolved too, raising UserError when a glob
    matches nothing."""
    topology = topology or Topology.of(job)
    lora = job.peft is not None
    compute = compute_dtype(job, topology)
    sharded = topology.strategy == "fsdp2"
    if lora:
        trained = "fp32"
    else:
        trained = "fp32" if sharded else compute
    per_step = job.data.micro_batch_size * topology.world
    targets = parameters = None
    if lora and dims is not None and dims.named:
        targets = tuple(lora_targets(dims.linear_names(), dims.head_name, job.peft, dims.model_type))
        parameters = tuple(expert_targets([e.name for e in dims.experts()], job.peft, dims.model_type)) or None
    return Decision(
        topology=topology,
        lora=lora,
        peft_method=job.peft.method if lora else None,
        compute=compute,
        frozen=compute if lora else None,
        trained=trained,
        grad=trained,
        optim=trained,
        grad_sync="step" if (lora or not sharded) else "micro_batch",
        quantization=job.model.quantization,
        cpu_offload=job.model.cpu_offload,
        activation_checkpointing=job.model.activation_checkpointing is True,  # `auto`: settled by the plan
        accum_steps=max(1, job.data.global_batch_size // per_step),
        lora_targets=targets,
        lora_parameters=parameters,
        reference=(ADAPTERS_OFF if lora else compute) if job.objective.reference else None,
    )
