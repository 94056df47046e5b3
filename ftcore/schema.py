"""The one definition of an ft job.

Frozen pydantic models, ``extra="forbid"``, a description on every field. The launcher
validates a resolved job with them before it writes anything; the trainer validates the
same ``config.yaml`` again inside the container (``load_job``). Nothing here imports torch.

Every rule that depends only on the config lives here, so `ft submit` and `ft show` refuse a
job that cannot run before it waits in a queue; the trainer checks only what needs the
machine (CUDA, installed packages, the processes actually started).

Values that follow from others (world size, gradient accumulation) are computed here and
nowhere else: see ``Job.world_size`` and ``Job.grad_accum_steps``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftcore import dtypes, families, formats, runtimes, secrets, shipped
from ftcore.errors import UserError

# Characters that may never reach a rendered script, whatever the quoting: a newline in an
# #SBATCH header value would start a new shell line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SBATCH_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")
_SLURM_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$|^\d+-\d{1,2}$|^UNLIMITED$|^INFINITE$")
# $SLURM_GPUS_PER_NODE: a count, optionally after a GPU type (`a100:2`, `gpu:a100:2`).
_SLURM_GPUS = re.compile(r"^(?:gpu:)?(?:([A-Za-z0-9_.-]+):)?(\d+)$")
# #SBATCH options ft derives from the job itself: set through these keys, never `slurm.extra`
# (sbatch takes the last of two, so an extra one would silently undo the derived value).
DERIVED_SBATCH_OPTIONS = {
    "nodes": "trainer.num_nodes", "ntasks-per-node": "trainer.devices", "ntasks": "trainer.devices",
    "gpus-per-node": "trainer.devices", "job-name": "slurm.job_name", "time": "slurm.time",
    "partition": "slurm.partition", "account": "slurm.account", "qos": "slurm.qos",
    "constraint": "slurm.constraint", "cpus-per-task": "slurm.cpus_per_task", "mem": "slurm.mem",
    "output": "(the job folder's logs/)", "error": "(the job folder's logs/)",
    "open-mode": "(always append)", "signal": "slurm.signal_seconds", "requeue": "(always on)",
    "array": "--sweep", "dependency": "--after", "wrap": "(ft writes the script)",
}
# Environment variables ft sets from the `hub` section; container.env may not set them too.
HUB_ENV = ("HF_HUB_CACHE", "HF_HUB_OFFLINE")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def looks_local(spec: str) -> bool:
    """A path rather than a hub id or a file ft ships: absolute, relative with ./ or ~, or a
    data file name."""
    if spec.startswith(shipped.PREFIX):
        return False
    return spec.startswith(("/", ".", "~")) or spec.endswith((".json", ".jsonl"))


def has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def _no_control(value: str, what: str = "value") -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain newlines or control characters")
    return value


def _no_nul(value: Any, where: str = "") -> None:
    """A NUL byte ends a C string early: a path or a script line would silently lose its tail."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where or 'a value'} contains a NUL byte")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _no_nul(item, where)


def check_prompt_template(template: str) -> list[str]:
    """The record fields a prompt template names; ValueError when it is not a format string
    the trainer can fill (only `{field}` by name, no positions, attributes or indexes)."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"not a valid format string ({err}); write {{{{ and }}}} for literal braces") from None
    fields = []
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"{{{name}}}: name a record field, like {{question}} (no positions, "
                             "attributes or indexes)")
        if spec and ("{" in spec):
            raise ValueError(f"{{{name}:{spec}}}: nested fields are not supported")
        fields.append(name)
    return fields


class ModelConfig(_Section):
    path: str | None = Field(
        None,
        description="Base model: a local Hugging Face folder or a hub id. "
        "`resume.restore_config.path` sets the same thing (the workshop's key).",
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained",
        description="`pretrained` loads weights from `path`; `random` builds the model from "
        "`config` with random weights (tests, smoke runs) and refuses a `path` it would not read.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Model config for `init: random` (e.g. LlamaConfig keys), or overrides "
        "applied to the loaded config: only the keys named change, and a `model_type` other than the "
        "checkpoint's is refused. `config: null` drops one inherited through `extends:`.",
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer folder or hub id; defaults to `path`."
    )
    dtype: Literal[dtypes.NAMES] = Field(
        "bf16",
        description="Compute dtype on GPUs (bf16 or fp32; fp16 is refused: it needs loss scaling). "
        "CPU runs train in fp32 whatever this says.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel passed to transformers."
    )
    activation_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="Recompute decoder-layer activations in backward to save memory. `auto`: "
        "`ft submit` turns it on where the plan says the job does not fit without it (and says so); "
        "a job folder records true or false."
    )
    meta_init: bool = Field(
        False,
        description="Build the model on the meta device and fill each rank's shard from the "
        "checkpoint (models larger than one GPU: the 405B and 8B SFT factories).",
    )
    quantization: Literal["nf4"] | None = Field(
        None,
        description="`nf4`: QLoRA. The frozen base's decoder projections are stored in 4-bit NF4 "
        "(torchao), replicated (ddp) or sharded (fsdp2); adapters train in fp32 and are saved as "
        "plain PEFT adapters over the unquantized base. Needs peft=lora and the torchao package.",
    )
    cpu_offload: bool = Field(
        False,
        description="FSDP2 keeps the sharded weights (the frozen base, and with it the adapters, "
        "their gradients and optimizer state) in host memory and copies each layer to the GPU "
        "when it computes: less GPU memory, slower steps. Needs trainer.strategy=fsdp2 and GPUs.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub repository.")
    parameters_b: float | None = Field(
        None,
        description="Parameter count in billions, for `ft plan` and the factory table when the "
        "model folder is not at hand.",
        ge=0,
    )


class LoraConfig(_Section):
    method: Literal["lora", "dora"] = Field(
        "lora",
        description="PEFT method: `lora`, or `dora` (LoRA plus a trained magnitude per output row of each "
        "adapted layer, peft's use_dora; not with model.quantization, not servable by vLLM without "
        "`ft export --merge`). `peft=none` means full SFT.",
    )
    dim: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(32, gt=0, description="LoRA scale numerator: updates are scaled by alpha/dim.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        None,
        description="Module-name globs to adapt, matched against full names and last "
        "components: `*_proj`, `q_proj`, and NeMo AutoModel's `*.proj` (a `.` matches any "
        "character there: every projection). A glob matching no layer is an error. Unset: the "
        "family's attention and MLP projections, whatever it calls them (see the README's "
        "model-coverage table); every linear layer but the head for a family ft does not know.",
    )
    experts: bool | None = Field(
        None,
        description="Adapt MoE experts stored as 3-D weights (Mixtral, Qwen3-MoE, gpt-oss, DeepSeek-V3, "
        "Qwen3-Next) through peft's target_parameters: rank `dim` per expert, so the MLP part of the "
        "adapter is about num_experts times larger. Unset: yes when target_modules is unset or "
        "match_all_linear, no when target_modules lists layers. Needs dropout=0.",
    )
    match_all_linear: bool = Field(
        False, description="Adapt every linear layer except the output head (overrides target_modules)."
    )
    exclude_modules: list[str] = Field(
        default_factory=list, description="Module-name globs never adapted."
    )

    @field_validator("target_modules", "exclude_modules", mode="before")
    @classmethod
    def _one_glob_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class DataSource(_Section):
    """One source of a data mixture (`data.path: [a.jsonl, {path: b.jsonl, weight: 2}]`)."""

    path: str = Field(..., description="A local .json/.jsonl file, `ft:NAME`, or a hub dataset.")
    weight: float = Field(
        1.0, gt=0, allow_inf_nan=False,
        description="How many times each of its training records is used per epoch: 2 repeats them, 0.5 keeps "
        "a seeded half. Held-out validation records are taken before weighting.",
    )
    split: str | None = Field(None, description="Its split (hub datasets); default data.split (data.val_split).")


def _sources(value: "str | list | None", split: str) -> tuple[DataSource, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    return tuple(item.model_copy(update={"split": item.split or split}) if isinstance(item, DataSource)
                 else DataSource(path=item, split=split) for item in items)


class DataConfig(_Section):
    path: str | list[str | DataSource] = Field(
        ...,
        description="Training data: a local .json/.jsonl file, or a hub dataset name when the "
        "cluster has network. `ft:` prefixes a file shipped with ft (`ft:tiny_qa.jsonl`). A list "
        "(`[a.jsonl, org/set]`, items may be `{path, weight, split}`) trains on the mixture.",
    )
    format: Literal[formats.NAMES] = Field(
        ...,
        description="`squad` (context, question, answers), `alpaca` (instruction, input, "
        "output), `jsonl` (prompt/completion or chat `messages`).",
    )
    split: str = Field("train", description="Split name for hub datasets.")
    val_path: str | list[str | DataSource] | None = Field(
        None, description="Validation file (or a list, as data.path; weights do not apply); without it "
        "`val_fraction` of the training data is held out."
    )
    val_split: str = Field("validation", description="Validation split name for hub datasets.")
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of training records held out when there is no val_path."
    )
    limit_samples: int | None = Field(
        None, ge=1, description="Use only the first N training records (smoke runs)."
    )
    global_batch_size: int = Field(
        8, ge=1, description="Sequences per optimizer step, across all data-parallel ranks."
    )
    micro_batch_size: int = Field(
        1, ge=1, description="Sequences per forward/backward on one rank."
    )
    max_seq_length: int = Field(2048, ge=8, description="Longer examples are truncated to this.")
    packing: bool = Field(
        False,
        description="Pack several examples into one row of max_seq_length, with no attention "
        "across examples.",
    )
    group_by_length: bool = Field(
        True,
        description="Sort each global batch by length before splitting it into micro batches, "
        "so each pads little. Same samples per step, same loss up to rounding; pays with "
        "gradient accumulation (more than one micro batch per rank and step).",
    )
    padding_free: bool = Field(
        True,
        description="Run each micro batch as one row, its examples end to end, attention kept "
        "within each example: no compute on padding. Same loss as the padded layout up to "
        "rounding. Needs sdpa or flash_attention_2 (eager pads).",
    )
    shuffle: bool = Field(True, description="Shuffle training records each epoch (seeded).")
    prompt_template: str | None = Field(
        None,
        description="Python format string for the prompt; fields of the record by name. "
        "Defaults depend on the format.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is not None:
            check_prompt_template(value)
        return value

    @field_validator("path", "val_path")
    @classmethod
    def _mixture(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list names no data: give a file, a hub dataset, or a list of them")
        for item in value if isinstance(value, list) else [value]:
            text = item.path if isinstance(item, DataSource) else item
            if isinstance(text, str):
                _no_control(text, "a data path")
                if not text.strip():
                    raise ValueError("a data path must not be empty")
        return value

    @property
    def sources(self) -> tuple[DataSource, ...]:
        """The training data as sources, each with its split (one for a single path)."""
        return _sources(self.path, self.split)

    @property
    def val_sources(self) -> tuple[DataSource, ...]:
        return _sources(self.val_path, self.val_split)

    @property
    def mixture(self) -> bool:
        return isinstance(self.path, list)


class TrainerConfig(_Section):
    num_nodes: int = Field(1, ge=1, description="Nodes to allocate.")
    devices: int = Field(
        1,
        ge=1,
        description="GPUs per node, one task each (or CPU tasks per node on a CPU cluster). "
        "The SLURM header is derived from num_nodes and devices.",
    )
    accelerator: Literal["gpu", "cpu"] = Field(
        "gpu", description="`gpu` asks SLURM for GPUs (--gpus-per-node); `cpu` for CPU-only tasks."
    )
    gpu_memory_gib: float = Field(
        80.0, gt=0, allow_inf_nan=False,
        description="Memory of one of the site's GPUs in GiB, as CUDA reports it: what `ft plan` and "
        "`ft submit`'s fit check price a job against. 80 for A100/H100 80GB; set it in the site "
        "profile (H200: 140, H100 94GB NVL: 93.5, A100 40GB: 40).",
    )
    gpu_type: str | None = Field(
        None,
        description="GPU type SLURM allocates (`--gpus-per-node=a100:2`); `trainer.devices=a100:2`, as "
        "$SLURM_GPUS_PER_NODE writes it, sets both. Null: any GPU.",
    )

    @model_validator(mode="before")
    @classmethod
    def _typed_gpu_count(cls, raw: Any) -> Any:
        """`devices: a100:2` (as SLURM writes $SLURM_GPUS_PER_NODE) is a count and a GPU type."""
        if not isinstance(raw, dict) or not isinstance(raw.get("devices"), str):
            return raw
        match = _SLURM_GPUS.match(raw["devices"].strip())
        if not match or not match.group(1):
            return raw  # a plain count, or not one: the field says which
        given = raw.get("gpu_type")
        if given not in (None, match.group(1)):
            raise ValueError(f"trainer.devices={raw['devices']} and trainer.gpu_type={given} name two GPU types: give one")
        return {**raw, "devices": int(match.group(2)), "gpu_type": match.group(1)}

    @field_validator("devices", mode="before")
    @classmethod
    def _slurm_gpu_count(cls, value: Any) -> Any:
        """As SLURM writes $SLURM_GPUS_PER_NODE: `2` (a typed `a100:2` is split above)."""
        if isinstance(value, str):
            match = _SLURM_GPUS.match(value.strip())
            if not match:
                raise ValueError(f"expected a GPU count like 2 or a100:2 (as $SLURM_GPUS_PER_NODE gives it), got {value!r}")
            return int(match.group(2))
        return value

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type_word(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.-]+$", value):
            raise ValueError(f"{value!r} is not a GPU type name like a100 or h100")
        return value
    max_steps: int | None = Field(
        None, ge=1, description="Optimizer steps to run; wins over num_epochs when both are set."
    )
    num_epochs: int = Field(1, ge=1, description="Epochs to run when max_steps is not set.")
    val_every_steps: int | None = Field(
        None, ge=1, description="Validate every N steps (and at the end); null: only at the end."
    )
    limit_val_batches: int | None = Field(
        None, ge=0, description="Validation batches per validation run; null means all, 0 none."
    )
    log_every_steps: int = Field(1, ge=1, description="Log line frequency on rank 0.")
    seed: int = Field(1234, description="Seed for weights (random init), LoRA init, data order, dropout.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null: off.")
    strategy: Literal["auto", "ddp", "fsdp2"] = Field(
        "auto",
        description="`auto`: data parallel for LoRA, FSDP2 (fully_shard per decoder layer) for SFT.",
    )
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (before FSDP2 shards it). Shapes are marked "
        "dynamic after the first change, so a few recompiles early on; measure before relying on "
        "it (docs/benchmarks.md).",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="A step whose loss or gradient is NaN/inf is never applied to the weights (the "
        "optimizer skips it on the device); `stop` then ends the run with a message at the next "
        "check, `skip` carries on and reports how many steps were skipped.",
    )
    check_loss: bool = Field(
        True,
        description="Before training, compare ft's loss with the model's own forward loss on the "
        "first example (at most 512 tokens); a mismatch (output scaling ft does not know) stops the run.",
    )
    liger: bool = Field(
        False,
        description="Liger kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) when the "
        "liger-kernel package is installed; GPUs only.",
    )
    tensorboard: bool = Field(False, description="Also write TensorBoard events (when installed).")
    wandb_project: str | None = Field(None, description="Also log to this W&B project (when installed).")


class SchedulerConfig(_Section):
    name: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to lr over these steps.")
    min_lr: float = Field(0.0, ge=0, description="Floor of the cosine/linear decay.")


class ObjectiveConfig(_Section):
    name: Literal["sft", "dpo", "orpo"] = Field(
        "sft",
        description="What the model is trained to do. `sft`: the answer tokens' cross-entropy. `dpo`: Direct "
        "Preference Optimization (Rafailov et al. 2023) on preference pairs, against a reference model: the "
        "base with the adapters switched off under LoRA, a frozen copy of the base for full weights (TRL's "
        "DPOTrainer). `orpo`: Odds Ratio Preference Optimization (Hong et al. 2024), reference-free: the chosen "
        "answer's cross-entropy plus beta times an odds-ratio term (TRL's ORPOTrainer). `dpo` and `orpo` need a "
        "preference data format (`data.format=preference`). `objective=dpo` on the command line switches.",
    )
    beta: float = Field(
        0.1, gt=0, allow_inf_nan=False,
        description="DPO: how far the policy may move from the reference (higher: less); the rewards are "
        "beta × the log-probability ratio to the reference. ORPO: the weight of the odds-ratio term (TRL's "
        "ORPOConfig.beta, the paper's lambda). TRL's default 0.1.",
    )
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
        "sigmoid",
        description="DPO's loss of the reward margin, as TRL names it: `sigmoid` (the paper's), `hinge` (SLiC), "
        "`ipo` (IPO, margins per response token as TRL computes it).",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="DPO with loss_type=sigmoid: the probability that a pair's preference is flipped, "
        "smoothing the loss as conservative DPO (cDPO: the original DPO code's, TRL's before 1.0); 0 is the "
        "plain loss.",
    )

    @property
    def pairs(self) -> bool:
        """Whether it trains on preference pairs (chosen and rejected answers to one prompt)."""
        return self.name != "sft"

    @property
    def reference(self) -> bool:
        """Whether it compares the policy with a reference model."""
        return self.name == "dpo"


class OptimConfig(_Section):
    name: Literal["adamw", "adam"] = Field("adamw", description="Optimizer.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (AdamW).")
    lr_scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="Learning-rate schedule."
    )


class CheckpointConfig(_Section):
    every_steps: int | None = Field(
        None, ge=1, description="Save every N steps; a final checkpoint is always written."
    )
    keep_last: int | None = Field(
        2, ge=1, description="Keep the newest N step checkpoints; null keeps all."
    )
    hf_every_save: bool = Field(
        False,
        description="Write the Hugging Face files (LoRA adapter, or SFT model) into every checkpoint, "
        "not only the final one, so `PeftModel.from_pretrained(base, JOB/checkpoints/step-N)` loads "
        "any of them as it is. Costs a full gather on rank 0 at each save. (AutoModel's "
        "`checkpoint.save_consolidated`.)",
    )


class RestoreConfig(_Section):
    path: str | None = Field(
        None, description="Local base-model folder (the workshop's key; sets model.path)."
    )


class ResumeConfig(_Section):
    restore_config: RestoreConfig = Field(
        default_factory=RestoreConfig, description="Where the base model comes from."
    )
    auto: bool = Field(
        True, description="Continue from the newest complete checkpoint in the job folder, if any."
    )


class ContainerConfig(_Section):
    runtime: str = Field(
        "singularity", description="singularity, apptainer, pyxis (srun --container-image), or `none`: the "
        "same command on the host, without a container. The names are ftcore/runtimes.py's."
    )
    image: str | None = Field(
        None, description="Image: a local .sif path or a URI (docker://, oras://, library://)."
    )
    binds: list[str] = Field(
        default_factory=list, description="Bind mounts `src[:dst[:opts]]`; sources must exist."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for the training processes. Never secrets: HF_TOKEN and the "
        "like pass through from your shell.",
    )
    nv: bool = Field(True, description="Pass --nv (NVIDIA GPUs inside the container).")
    mount_ft: bool = Field(
        True,
        description="Bind this ft's trainer into the container (on PYTHONPATH), so any image "
        "with torch, transformers and peft runs it; false if the image has ft installed.",
    )
    python: str | None = Field(
        None,
        description="Python that runs the trainer: `python` inside a container; without one, "
        "the interpreter ft itself runs with.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where a URI image (docker://, oras://, library://) is converted to a SIF "
        "once, on the login node, and kept: a folder the compute nodes see. Default "
        "$FT_HOME/images.",
    )
    trusted_owners: list[str] = Field(
        default_factory=list,
        description="Besides you and root, who may own the SIFs in a shared cache_dir that your "
        "jobs run: user names, `uid:N` for an owner without a name, or `group:NAME` for a "
        "group's members. Others' images are refused.",
    )

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in runtimes.RUNTIMES:
            raise ValueError(f"expected {', '.join(map(repr, runtimes.names()))} (got {value!r})")
        return value

    @field_validator("image")
    @classmethod
    def _image_line(cls, value: str | None) -> str | None:
        return value if value is None else _no_control(value, "container.image")

    @field_validator("binds")
    @classmethod
    def _bind_lines(cls, value: list[str]) -> list[str]:
        for bind in value:
            _no_control(bind, "a bind")
            if not bind or bind.startswith(":"):
                raise ValueError(f"bind {bind!r} has no source path")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _no_control(text, f"container.env.{name}")
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name in HUB_ENV:
                raise ValueError(f"{name} is set by ft from the hub section: use hub.cache_dir or hub.offline")
            if secrets.looks_secret(name):
                raise ValueError(
                    f"{name} looks like a secret; ft never writes secrets to disk. "
                    f"Export it in your shell instead (`export {name}=...`): the job inherits it."
                )
        return value

    @field_validator("python", "cache_dir")
    @classmethod
    def _python_line(cls, value: str | None) -> str | None:
        return value if value is None else _no_control(value, "container.python or cache_dir")


class HubConfig(_Section):
    cache_dir: str | None = Field(
        None,
        description="Shared Hugging Face cache (the job's HF_HUB_CACHE) on a filesystem the "
        "compute nodes see: `ft stage` downloads the job's hub model and dataset into it on "
        "the login node. Default: $FT_HOME/hub.",
    )
    offline: bool = Field(
        False,
        description="The compute nodes cannot reach the hub: the job runs with "
        "HF_HUB_OFFLINE=1, and `ft submit` refuses a job whose hub model or dataset is not "
        "staged in cache_dir (it prints the `ft stage` command). Set it in the site profile.",
    )
    trusted_owners: list[str] = Field(
        default_factory=list,
        description="Besides you and root, who may own the staged files in a shared cache_dir that "
        "your jobs load: user names, `uid:N` for an owner without a name, or `group:NAME` for a "
        "group's members. Others' are refused.",
    )

    @field_validator("cache_dir")
    @classmethod
    def _cache_line(cls, value: str | None) -> str | None:
        return value if value is None else _no_control(value, "hub.cache_dir")


class SlurmConfig(_Section):
    job_name: str | None = Field(None, description="Job name; defaults to `ft-<factory>`.")
    partition: str | None = Field(None, description="Partition (-p).")
    account: str | None = Field(None, description="Account to charge (-A).")
    qos: str | None = Field(None, description="Quality of service.")
    time: str = Field(
        "auto", description="Time limit, e.g. `04:00:00` or `1-00:00:00`. `auto`: `ft submit` sets it from "
        "`ft plan`'s time estimate with a margin (01:00:00 where it cannot estimate; the job folder records it)."
    )
    constraint: str | None = Field(None, description="Node features (-C), e.g. `a100|h100`.")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs for each task (one task per GPU).")
    mem: str | None = Field(None, description="Memory per node, e.g. `200G`; `0` asks for all.")
    gpus_per_node_flag: bool = Field(
        True, description="Emit --gpus-per-node (some sites want --gres in `extra` instead)."
    )
    modules: list[str] = Field(default_factory=list, description="`module load` these before running.")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run before srun, verbatim (site set-up; you write these yourself).",
    )
    extra: dict[str, str | None] = Field(
        default_factory=dict,
        description="More #SBATCH options, `name: value` (`mail-type: END`), kept as written; "
        "`true` (or null) for a flag (`exclusive: true` → `--exclusive`), `false` leaves it out.",
    )
    template: str | None = Field(None, description="Path to a site's own sbatch Jinja template.")
    signal_seconds: int = Field(
        120, ge=10, description="Ask SLURM for USR1 this many seconds before the time limit."
    )
    max_requeues: int = Field(3, ge=0, description="Requeue a preempted/timed-out job at most N times.")

    @field_validator("job_name", "partition", "account", "qos", "time", "constraint", "mem")
    @classmethod
    def _header_value(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return value
        _no_control(value, f"slurm.{info.field_name}")
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("time")
    @classmethod
    def _time_format(cls, value: str) -> str:
        if value != "auto" and not _SLURM_TIME.match(value):
            raise ValueError(
                f"{value!r} is not a SLURM time: use MM, HH:MM:SS, D-HH, D-HH:MM[:SS] or UNLIMITED"
            )
        return value

    @field_validator("modules")
    @classmethod
    def _module_lines(cls, value: list[str]) -> list[str]:
        for module in value:
            _no_control(module, "a module name")
        return value

    @field_validator("setup")
    @classmethod
    def _setup_lines(cls, value: list[str]) -> list[str]:
        for line in value:
            _no_control(line, "a setup line (give one line per list item)")
        return value

    @field_validator("extra", mode="before")
    @classmethod
    def _extra_as_text(cls, value: Any) -> Any:
        """A number is the text it was (`nice: 10`); a flag set to true is the bare flag
        (`exclusive: true` → `--exclusive`, as null is), one set to false is left out. No sbatch
        option takes the words true or false, so the text `true` (a command line's) counts too."""
        if not isinstance(value, dict):
            return value
        converted = {}
        for name, option in value.items():
            word = str(option).lower() if isinstance(option, (bool, str)) else None
            if word == "false":
                continue
            converted[name] = None if word == "true" else str(option) if isinstance(option, (int, float)) else option
        return converted

    @field_validator("extra")
    @classmethod
    def _extra_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, option in value.items():
            if not _SBATCH_OPTION.match(name):
                raise ValueError(f"{name!r} is not an sbatch option name (like `mail-type`)")
            if name in DERIVED_SBATCH_OPTIONS:
                raise ValueError(f"slurm.extra.{name}: ft sets --{name} itself; use {DERIVED_SBATCH_OPTIONS[name]}")
            if isinstance(option, str):
                _no_control(option, f"slurm.extra.{name}")
        return value


class Job(_Section):
    """A complete fine-tuning job: what runs, on what, and where it writes."""

    name: str = Field("job", description="Factory name (recorded in the job folder and `ft jobs`).")
    description: str = Field("", description="One line saying what this job is for.")
    extends: str | None = Field(
        None, description="Factory this one extends (resolved before validation; kept for reference)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    peft: LoraConfig | None = Field(
        default_factory=LoraConfig, description="`peft=lora` (default) or `peft=none` for full SFT."
    )
    data: DataConfig = Field(..., description="Dataset and batch sizes.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Run length and layout.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and schedule.")
    objective: ObjectiveConfig = Field(
        default_factory=ObjectiveConfig, description="The training objective: SFT, or preference tuning (DPO, ORPO)."
    )
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints.")
    resume: ResumeConfig = Field(default_factory=ResumeConfig, description="Base weights and resuming.")
    container: ContainerConfig = Field(default_factory=ContainerConfig, description="Container.")
    hub: HubConfig = Field(default_factory=HubConfig, description="Hub cache and offline compute nodes.")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig, description="Scheduler settings.")

    @field_validator("name")
    @classmethod
    def _name_line(cls, value: str) -> str:
        return _no_control(value, "name")

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, raw: Any) -> Any:
        _no_nul(raw)
        return fold_aliases(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _consistent(self) -> "Job":
        """Rules across sections; every broken one is reported (one line each)."""
        problems = []
        if self.model.init == "pretrained" and not self.model.path:
            problems.append(
                "model.path is not set: give a local model folder or hub id "
                "(model.path=... or resume.restore_config.path=...)"
            )
        if self.model.init == "random" and not self.model.config:
            problems.append("model.init=random needs model.config (e.g. LlamaConfig keys)")
        if self.model.init == "random" and self.model.path:
            problems.append(
                f"model.path={self.model.path} with model.init=random: a random model is built from model.config "
                "and never reads these weights. To train them set model.init=pretrained (and model.config=null, "
                "or `config: null` in the recipe, to drop a config inherited through `extends:`); for a random "
                "model drop model.path"
            )
        per_step = self.data.micro_batch_size * self.world_size
        if self.data.global_batch_size % per_step:
            problems.append(
                f"data.global_batch_size={self.data.global_batch_size} is not a multiple of "
                f"data.micro_batch_size × data-parallel size = {self.data.micro_batch_size} × "
                f"{self.world_size} = {per_step}"
            )
        on_gpu = self.trainer.accelerator == "gpu"
        if self.model.quantization and self.peft is None:
            problems.append("model.quantization=nf4 (QLoRA) quantizes a frozen base: it needs peft=lora")
        if self.peft is not None and self.peft.method == "dora":
            if self.model.quantization:
                problems.append("peft.method=dora with model.quantization=nf4: DoRA takes the norm of each adapted "
                                "base weight in every forward, which the NF4-stored weights (torchao) do not give "
                                "peft; use peft.method=lora for QLoRA, or train DoRA on an unquantized base")
            if self.peft.experts:
                problems.append("peft.method=dora with peft.experts=true: peft's DoRA adapts linear layers only, "
                                "not 3-D expert weights; set peft.experts=false or peft.method=lora")
        if self.model.cpu_offload:
            if self.strategy != "fsdp2":
                problems.append("model.cpu_offload moves FSDP2 shards to host memory: it needs trainer.strategy=fsdp2")
            if not on_gpu:
                problems.append("model.cpu_offload frees GPU memory: a CPU job (trainer.accelerator=cpu) has none "
                                "to free; drop model.cpu_offload")
        if self.model.dtype == "fp16" and on_gpu:
            problems.append(
                "model.dtype=fp16 is refused: fp16 gradients underflow without loss scaling, which ft "
                "does not do. Use bf16 (Ampere/Hopper GPUs and newer) or fp32"
            )
        if self.peft is None and self.strategy == "ddp" and on_gpu and self.model.dtype != "fp32":
            problems.append(
                f"full SFT with trainer.strategy=ddp would train {self.model.dtype} weights with "
                f"{self.model.dtype} Adam state (small updates round away): use trainer.strategy=fsdp2, "
                "which keeps fp32 master weights and computes in bf16 (also on one GPU), or model.dtype=fp32"
            )
        if self.trainer.liger and not on_gpu:
            problems.append("trainer.liger needs GPUs (Liger's kernels are Triton): trainer.accelerator=gpu")
        if self.model.attn_implementation == "flash_attention_2" and not on_gpu:
            problems.append("model.attn_implementation=flash_attention_2 needs GPUs: use sdpa on CPU")
        if self.model.meta_init and self.strategy != "fsdp2":
            problems.append(
                "model.meta_init fills FSDP2 shards: it needs trainer.strategy=fsdp2 (the default for peft=none)"
            )
        problems += families.problems(self, None)
        preference = formats.FORMATS[self.data.format].pairs
        if self.objective.pairs and not preference:
            problems.append(f"objective.name={self.objective.name} trains on preference pairs: it needs "
                            f"data.format={formats.PAIRS} (prompt, chosen, rejected), not {self.data.format}")
        if preference and not self.objective.pairs:
            problems.append(f"data.format={self.data.format} holds preference pairs: train on them with "
                            "objective.name=dpo or orpo (objective=dpo), or give SFT data")
        if self.objective.label_smoothing and (self.objective.name != "dpo" or self.objective.loss_type != "sigmoid"):
            problems.append("objective.label_smoothing smooths DPO's sigmoid loss: it needs objective.name=dpo and "
                            "objective.loss_type=sigmoid")
        if runtimes.RUNTIMES[self.container.runtime].image and not self.container.image:
            problems.append(
                f"container.runtime={self.container.runtime} needs container.image "
                "(or container.runtime=none to run without a container)"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # Values derived from others: computed here, once, and only read elsewhere.
    @property
    def world_size(self) -> int:
        """Total tasks = GPUs (or CPU tasks): num_nodes × devices."""
        return self.trainer.num_nodes * self.trainer.devices

    @property
    def grad_accum_steps(self) -> int:
        """global batch / (micro batch × data-parallel size); validated to divide."""
        return self.data.global_batch_size // (self.data.micro_batch_size * self.world_size)

    @property
    def method(self) -> str:
        return "sft" if self.peft is None else self.peft.method

    @property
    def strategy(self) -> str:
        if self.trainer.strategy != "auto":
            return self.trainer.strategy
        return "ddp" if self.peft is not None else "fsdp2"

    @property
    def job_name(self) -> str:
        return self.slurm.job_name or f"ft-{self.name}"

    @property
    def local_paths(self) -> dict[str, str]:
        """Settings that name a file or folder on the cluster's filesystem, by dotted key.

        Hub ids and files ft ships (`ft:`) are not among them. The launcher checks these
        exist before submitting, the trainer again inside the container (where a path that
        no bind covers is invisible), and the container layer binds them.
        """
        found = {}
        if self.model.init == "pretrained" and self.model.path and looks_local(self.model.path):
            found["model.path"] = self.model.path
        if self.model.tokenizer and looks_local(self.model.tokenizer):
            found["model.tokenizer"] = self.model.tokenizer
        for key, sources in (("path", self.data.sources), ("val_path", self.data.val_sources)):
            single = not isinstance(getattr(self.data, key), list)
            for index, source in enumerate(sources):
                if looks_local(source.path):
                    found[f"data.{key}" if single else f"data.{key}[{index}]"] = source.path
        for name in HF_CACHE_VARS:
            value = self.container.env.get(name)
            if value and value.startswith(("/", "~")):
                found[f"container.env.{name}"] = value
        return found

    def missing_paths(self) -> list[str]:
        """A problem for each local path that does not exist here, and for a local model
        folder whose weights are damaged (headers only: a missing or garbage shard, an index
        that is not one), so it fails here and not after the job waited in the queue."""
        from ftcore import layout
        from ftcore.files import expand

        problems = []
        for key, value in self.local_paths.items():
            try:
                if not expand(value).exists():
                    problems.append(f"{key} {value} does not exist")
                elif key == "model.path" and expand(value).is_dir():
                    problems += [f"model.path {value}: {p}" for p in layout.weights_damage(expand(value))]
            except UserError as err:
                problems.extend(f"{key}: {p}" for p in err.problems)
            except OSError as err:
                problems.append(f"{key} {value}: {err.strerror}")
        return problems


# Hugging Face cache folders the job is told to use (container.env): the trainer writes there.
HF_CACHE_VARS = ("HF_HOME", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")  # HF_HUB_CACHE: hub.cache_dir
# Which of Job.local_paths the job writes into (the rest it only reads).
WRITTEN_PATHS = tuple(f"container.env.{name}" for name in HF_CACHE_VARS)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for mappings; lists and scalars are replaced: how one
    layer of a job's settings goes over another (a factory over its parent, a profile, overrides)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# Keys that name the same setting as another: the source documents' spelling → ft's.
ALIASES = {"resume.restore_config.path": "model.path"}


def fold_aliases(layer: dict[str, Any]) -> dict[str, Any]:
    """One layer of settings (a factory file, a profile, a config) with each alias moved onto
    its key. Both given with different values is an error (ValueError): they are one setting."""
    result = dict(layer)
    for alias, key in ALIASES.items():
        *alias_path, alias_leaf = alias.split(".")
        parent = result
        for part in alias_path:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or parent.get(alias_leaf) is None:
            continue
        value = parent[alias_leaf]
        *key_path, key_leaf = key.split(".")
        section = result.get(key_path[0]) if len(key_path) == 1 else None
        current = section.get(key_leaf) if isinstance(section, dict) else None
        if current is not None and current != value:
            raise ValueError(
                f"{key}={current} and {alias}={value} name two different values of one setting: give one of them"
            )
        # Copy the nested dicts on the way down, so the caller's layer stays as it was.
        node = result
        for part in alias_path:
            node[part] = dict(node[part])
            node = node[part]
        del node[alias_leaf]
        result[key_path[0]] = {**(section if isinstance(section, dict) else {}), key_leaf: value}
    return result


# Sections whose value may be switched by a word on the command line (`peft=none`).
SWITCHES: dict[str, dict[str, dict[str, Any] | None]] = {
    "peft": {"lora": {"method": "lora"}, "none": None},
    "objective": {name: {"name": name} for name in ("sft", "dpo", "orpo")},
}


# --------------------------------------------------------------------------- validation

_TYPE_NAMES = ("str", "int", "float", "bool", "none", "list", "dict", "tuple")


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.split("[")[0] in _TYPE_NAMES)]
    return ".".join(parts)


def describe_errors(err: ValidationError) -> list[str]:
    """One line per problem, named by its dotted key, in the words a user reads."""
    problems = []
    for item in err.errors():
        where = _location(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        message = message.replace("Input should be", "expected").replace("Field required", "required")
        if item["type"] not in ("value_error", "missing") and "input" in item:
            shown = item["input"]
            message += f" (got {shown!r}, a {type(shown).__name__})"
        for line in message.split("\n"):
            problems.append(f"{where}: {line}" if where else line)
    return list(dict.fromkeys(problems))


def validate(data: Any) -> Job:
    """The one way a dict becomes a Job: every problem listed in one UserError."""
    try:
        return Job.model_validate(data)
    except ValidationError as err:
        raise UserError(*describe_errors(err)) from None


def load_job(path: str | Path) -> Job:
    """Read and validate a resolved config.yaml (what the trainer does first)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (yaml.YAMLError, ValueError) as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    try:
        return validate(raw)
    except UserError as err:
        raise UserError(f"{path} is not a valid ft job:", *err.problems) from None


def job_to_dict(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")
