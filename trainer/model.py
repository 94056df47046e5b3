"""The model: tokenizer, base weights, LoRA, sharding, and the loss it is trained on.

``build(job, env, device, tokenizer)`` returns a ``Built`` whose ``module`` maps a batch to
the *summed* cross-entropy over answer tokens. The loop divides by the global number of
answer tokens, so the loss does not depend on how the global batch is split.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ftcore import policy
from ftcore.errors import UserError

from . import attention
from .data import IGNORE_INDEX, shipped_file
from .dist import DistEnv

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def hf_token() -> str | None:
    """Read from the environment only: ft never writes the token anywhere."""
    return os.environ.get("HF_TOKEN") or None


# --- tokenizer -----------------------------------------------------------------------------


def tokenizer_source(job) -> str:
    if job.model.tokenizer:
        return job.model.tokenizer
    if job.model.path:
        return job.model.path
    return str(shipped_file("tiny_tokenizer"))  # init=random with no tokenizer: ft's tiny one


def load_tokenizer(job):
    from transformers import AutoTokenizer

    source = tokenizer_source(job)
    if source.startswith("ft:"):
        source = str(shipped_file(source[3:]))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, token=hf_token(), trust_remote_code=job.model.trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load the tokenizer from {source}: {e}") from None
    if tokenizer.pad_token_id is None:
        # Pad positions are masked out of attention and loss, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


# --- the loss --------------------------------------------------------------------------------


class CausalLMLoss(nn.Module):
    """Sum of next-token cross-entropy over answer positions.

    Calls the decoder and the output head itself instead of the model's forward, so that
    the head (the largest activation for big vocabularies) only sees hidden states at
    positions that carry loss. Being the root module also lets FSDP2 and data parallelism
    treat this as the model.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def causal_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, seq_lens=None) -> torch.Tensor:
        causal = self.causal_lm
        extra = {} if seq_lens is None else {attention.SEQ_LENS: seq_lens}  # padding-free row
        hidden = causal.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra
        ).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        # Boolean indexing is a host sync on GPU; it buys a vocabulary projection over
        # answer tokens only (often a small fraction of all tokens).
        hidden = hidden[:, :-1][keep]
        return answer_cross_entropy(causal.get_output_embeddings(), hidden, targets[keep], causal.config)


def _ce_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:  # Gemma-2 style final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def answer_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, config) -> torch.Tensor:
    softcap = getattr(config, "final_logit_softcapping", None)
    if hidden.shape[0] <= policy.LOSS_CHUNK_TOKENS:
        return _ce_sum(head, hidden, targets, softcap)
    # Recomputing each chunk's logits in backward costs one more head matmul over answer
    # tokens and saves storing all of them.
    return sum(
        torch.utils.checkpoint.checkpoint(_ce_sum, head, h, t, softcap, use_reentrant=False)
        for h, t in zip(hidden.split(policy.LOSS_CHUNK_TOKENS), targets.split(policy.LOSS_CHUNK_TOKENS))
    )


# --- LoRA targets ----------------------------------------------------------------------------


def lora_targets(model: nn.Module, cfg) -> list[str]:
    """The explicit list of linear-layer names the `peft` globs adapt (rule: ftcore.policy)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    head_name = next((n for n, m in linears.items() if m is head), None)
    return policy.lora_targets(list(linears), head_name, cfg)


# --- building --------------------------------------------------------------------------------


@dataclass
class Built:
    module: nn.Module  # CausalLMLoss: the thing to train (sharded under FSDP2)
    lm: nn.Module  # the Hugging Face model (a PeftModel for LoRA)
    sharded: bool  # FSDP2: gradients are reduced by FSDP, state dicts are DTensors
    compute_dtype: torch.dtype

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device and buffers (RoPE frequencies) for real.

    Parameters are allocated with `torch.empty` (no pages touched) and moved to meta as
    they are registered, so a 405B model costs nothing here; buffers are tiny and are
    copied back after `to_empty`.
    """
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


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
    for key, value in job.model.config.items():
        setattr(config, key, value)
    return config


def attn_implementation(job) -> str:
    """What the model is built with: ft's padding-free sdpa (`trainer.attention`) when the
    data are collated padding-free, otherwise `model.attn_implementation` itself."""
    if job.data.padding_free and job.model.attn_implementation == "sdpa":
        return attention.register()
    return job.model.attn_implementation


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (what transformers itself never splits across devices)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # By class ancestry: FSDP2 swaps each sharded layer's class for a subclass (FSDPLlamaDecoderLayer).
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        raise UserError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return layers


def build(job, env: DistEnv, device: torch.device, tokenizer, base_dir: Path | None = None) -> Built:
    """Base model (+ LoRA), on `device`, sharded with FSDP2 when the strategy says so.

    `base_dir`: where rank 0 saves randomly initialised base weights before LoRA is added
    (random weights exist nowhere else, and an adapter is useless without its base).
    """
    from transformers import AutoModelForCausalLM

    sharded = job.strategy == "fsdp2"
    on_gpu = device.type == "cuda"
    # CPU trains in fp32. On GPUs weights are stored in model.dtype, except the trained
    # weights of full SFT under FSDP2: fp32 master shards, computed in model.dtype
    # (MixedPrecisionPolicy). peft keeps LoRA adapters in fp32 over a model.dtype base.
    compute_dtype = DTYPES[job.model.dtype] if on_gpu else torch.float32
    param_dtype = torch.float32 if (sharded and job.peft is None) else compute_dtype

    config = model_config(job)
    if len(tokenizer) > config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}"
        )
    common = dict(dtype=param_dtype, attn_implementation=attn_implementation(job))

    if job.model.meta_init:
        with _parameters_on_meta():
            lm = AutoModelForCausalLM.from_config(config, **common)
    elif job.model.init == "random":
        lm = _random_model(job, config, **common)
    else:
        extra = {}
        if job.model.quantization == "nf4":
            from transformers import BitsAndBytesConfig

            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute_dtype,
            )
        if on_gpu and not sharded:
            extra["device_map"] = {"": device}  # straight to this GPU, not via host memory
        lm = AutoModelForCausalLM.from_pretrained(
            job.model.path,
            config=config,
            token=hf_token(),
            trust_remote_code=job.model.trust_remote_code,
            **common,
            **extra,
        )
    lm.config.use_cache = False
    if base_dir is not None and env.is_main and not (base_dir / "config.json").exists():
        # (Meta-initialised weights are not here yet: draw the same ones again to save them.)
        _save_base(_random_model(job, config, **common) if job.model.meta_init else lm, tokenizer, base_dir)

    if job.model.activation_checkpointing:
        _checkpoint_activations(lm)

    if job.peft is not None:
        lm = _add_lora(lm, job)
    else:
        lm.requires_grad_(True)

    module = CausalLMLoss(lm)
    if sharded:
        _shard(module, job, env, device, compute_dtype)
        if job.model.meta_init:
            _materialize(module, job, env, device)
    else:
        module.to(device)
    if job.trainer.compile:
        for layer in decoder_layers(module.causal_lm):
            layer.compile()
    return Built(module=module, lm=lm, sharded=sharded, compute_dtype=compute_dtype)


def _checkpoint_activations(lm: nn.Module) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works under FSDP2 and peft)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers 5
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _random_model(job, config, **kwargs) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(job.trainer.seed)  # same weights on every rank, and on resume
    return AutoModelForCausalLM.from_config(config, **kwargs)


def _save_base(lm: nn.Module, tokenizer, base_dir: Path) -> None:
    import shutil

    tmp = base_dir.with_name(f".tmp-{base_dir.name}")
    for leftover in (tmp, base_dir):  # from a job killed while saving
        shutil.rmtree(leftover, ignore_errors=True)
    lm.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.rename(tmp, base_dir)  # config.json appears only once the weights are complete


def _add_lora(lm: nn.Module, job) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if job.model.quantization:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=job.model.activation_checkpointing)
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
    return get_peft_model(lm, config)  # freezes the base


def _shard(module: CausalLMLoss, job, env: DistEnv, device: torch.device, compute_dtype: torch.dtype) -> None:
    """FSDP2: one unit per decoder layer (all-gathered just in time), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(module.causal_lm):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(module, mesh=mesh, mp_policy=mp)


def _materialize(module: CausalLMLoss, job, env: DistEnv, device: torch.device) -> None:
    """Give meta-initialised shards real memory and fill each rank's rows from the source."""
    lm = module.lm  # a PeftModel for LoRA: its names are what the reader is asked for
    buffers = {name: b.clone() for name, b in lm.named_buffers()}
    module.to_empty(device=device)
    read = _weight_reader(job, lm)
    with torch.no_grad():
        for name, b in lm.named_buffers():
            b.copy_(buffers[name])
        for name, param in lm.named_parameters():
            local = param.to_local()
            # FSDP2 shards dim 0 like torch.chunk: ceil(n / world) rows per rank.
            rows = -(-param.shape[0] // env.world_size)
            start = min(env.rank * rows, param.shape[0])
            local.copy_(read(name, start, start + local.shape[0]).to(local.dtype))


def _weight_reader(job, lm: nn.Module):
    """A function (name, row_start, row_stop) → tensor holding only those rows.

    Names are `lm`'s own (a PeftModel's for LoRA). Called in `named_parameters` order on
    every rank, so seeded values come out the same everywhere.
    """
    if job.model.init == "random":
        # Random init has no file to read: build the seeded model on CPU exactly as the
        # regular path does (tests and smoke runs; tiny models only).
        reference = _random_model(job, lm.config, dtype=torch.float32)
        if job.peft is not None:
            reference = _add_lora(reference, job)
        weights = reference.state_dict()
        return lambda name, start, stop: weights[name][start:stop]

    from huggingface_hub import snapshot_download
    from safetensors import safe_open

    folder = Path(job.model.path)
    if not folder.is_dir():
        folder = Path(snapshot_download(job.model.path, allow_patterns=["*.safetensors", "*.json"], token=hf_token()))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        with safe_open(folder / "model.safetensors", framework="pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    def stored_name(name: str) -> str:  # a PeftModel's name for a base weight → the file's
        return name.removeprefix("base_model.model.").replace(".base_layer.", ".")

    shapes = {n: p.shape for n, p in lm.named_parameters()}
    missing = [n for n in shapes if "lora_" not in n and stored_name(n) not in weight_map]
    if missing:
        raise UserError(f"{folder} has no weights for {len(missing)} parameters, e.g. {missing[:3]}")
    handles: dict[str, object] = {}
    generator = torch.Generator().manual_seed(job.trainer.seed)

    def read(name: str, start: int, stop: int) -> torch.Tensor:
        if ".lora_A." in name:  # fresh adapters, initialised as peft does: kaiming-uniform A ...
            full = torch.empty(shapes[name])
            nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=generator)
            return full[start:stop]
        if ".lora_B." in name:  # ... and zero B, so training starts from the base model
            return torch.zeros(shapes[name])[start:stop]
        key = stored_name(name)
        file = weight_map[key]
        if file not in handles:
            handles[file] = safe_open(folder / file, framework="pt")
        return handles[file].get_slice(key)[start:stop]  # reads these rows only

    return read
