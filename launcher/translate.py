"""Recipes and habits from NeMo AutoModel and NeMo, read as ft jobs.

A NeMo AutoModel recipe YAML (`model._target_: ...from_pretrained`, `step_scheduler`,
`dataset: {_target_: ...make_squad_dataset}`, ...) given to `ft submit --factory FILE` is
recognised by its shape and translated into an ft job before validation; the schema stays
the one definition of a job. Each key is either translated (the line says to what), ignored
with the reason (a knob with no effect on what is trained, such as a faster kernel), or
refused by name (it means something ft does not do). The same goes for NeMo-style keys on
the command line (`peft=qlora`, `quantization.load_in_4bit=true`, `peft.peft_scheme=lora`,
`model.pretrained_model_name_or_path=...`).

    ft show   --factory peft_guide.yaml container.runtime=none   # prints the translation first
    ft submit --factory peft_guide.yaml --executor local --yes

Pure functions over plain dicts; nothing here reads files. A recipe is data from anywhere:
a count the translation computes with must be a whole number in range, a flag true or false,
and no value is passed on or shown past a few KiB (refused by name, never a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftcore import dtypes

# Top-level sections only an AutoModel recipe has (an ft job has none of them).
_AUTOMODEL_SECTIONS = ("step_scheduler", "dataset", "validation_dataset", "distributed", "dist_env",
                       "loss_fn", "dataloader", "validation_dataloader", "rng", "quantization",
                       "optimizer", "lr_scheduler")
_SQUAD_BUILDER = "make_squad_dataset"
_OPTIMIZERS = {"torch.optim.Adam": "adam", "torch.optim.AdamW": "adamw"}
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant"}
# A setting is a number, a word, a path or a short list; past this many characters it is not one.
VALUE_LIMIT = 4096
# The largest count (samples, batch size, steps) the translation multiplies or divides.
COUNT_LIMIT = 10**12
_SHOWN = 200  # characters of a value a line shows


@dataclass
class Translation:
    """What a foreign recipe became: the ft job (a plain dict) and one line per key."""

    source: str
    data: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def set(self, key: str, value: Any, origin: str) -> None:
        if _larger_than(value, VALUE_LIMIT):
            self.refuse(origin, f"a value of more than {VALUE_LIMIT} characters ({_show(value)}) is no setting")
            return
        node = self.data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.lines.append(f"{origin} → {key}={_show(value)}")

    def ignore(self, origin: str, why: str) -> None:
        self.lines.append(f"{origin}: ignored ({why})")

    def refuse(self, origin: str, why: str) -> None:
        self.refused.append(f"{self.source}: {origin}: {why}")


def _show(value: Any) -> str:
    """The value as a line shows it: at most _SHOWN characters."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list):
        text = "[" + ",".join(_show(v) for v in value[:_SHOWN]) + "]"
    elif isinstance(value, int) and abs(value) > 10**_SHOWN:
        text = f"a number of {len(str(abs(value))) if abs(value) < 10**4000 else 'thousands of'} digits"
    else:
        text = str(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _larger_than(value: Any, budget: int) -> bool:
    """Whether `value` (strings, numbers, lists and mappings of them) spells out more than
    `budget` characters; stops counting as soon as it does."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            budget -= len(item)
        elif isinstance(item, (list, tuple)):
            budget -= len(item)
            pending += item[: budget + 1]
        elif isinstance(item, dict):
            budget -= len(item)
            pending += [*list(item)[: budget + 1], *list(item.values())[: budget + 1]]
        elif isinstance(item, int) and not isinstance(item, bool):
            budget -= item.bit_length() // 3
        else:
            budget -= 8
        if budget < 0:
            return True
    return False


def _count(translation: Translation, origin: str, value: Any) -> int | None:
    """A count the translation computes with: a whole number from 1 to COUNT_LIMIT, else refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= COUNT_LIMIT:
        translation.refuse(origin, f"{_show(value)}: must be a whole number from 1 to {COUNT_LIMIT}")
        return None
    return value


def _flag(translation: Translation, origin: str, value: Any) -> bool | None:
    """true or false as YAML writes them; a word such as "false" is refused, never read as true."""
    if not isinstance(value, bool):
        translation.refuse(origin, f"{_show(value)}: must be true or false")
        return None
    return value


def _set_flag(translation: Translation, key: str, section: dict[str, Any], theirs: str, origin: str) -> None:
    flag = _flag(translation, origin, section[theirs])
    if flag is not None:
        translation.set(key, flag, origin)


# Sections only an ft job has: a file with one of them is ft's, whatever else it holds (a
# mistyped `optimizer:` in a factory is then named as an unknown ft key, not translated).
_FT_SECTIONS = ("data", "trainer", "optim", "resume", "container", "hub", "slurm", "extends")


def is_automodel(data: dict[str, Any]) -> bool:
    """An AutoModel recipe: a `_target_` under `model`, or a section only AutoModel has in a
    file with none of ft's own."""
    model = data.get("model")
    if isinstance(model, dict) and ("_target_" in model or "pretrained_model_name_or_path" in model):
        return True
    return (any(section in data for section in _AUTOMODEL_SECTIONS)
            and not any(section in data for section in _FT_SECTIONS))


def _target(section: dict[str, Any]) -> str:
    target = section.get("_target_") or ""
    return target if isinstance(target, str) and len(target) <= _SHOWN else _show(target)


def _section(data: dict[str, Any], name: str, translation: Translation) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        translation.refuse(name, "expected a mapping of keys to values")
        return {}
    return value


def _unknown(translation: Translation, name: str, section: dict[str, Any], known: set[str]) -> None:
    for key in section:
        if key not in known and key != "_target_":
            translation.refuse(f"{name}.{_show(key)}", "has no ft equivalent")


def translate_automodel(data: dict[str, Any], source: str) -> Translation:
    """An AutoModel recipe as an ft job dict; `refused` lists what ft cannot do (by key)."""
    translation = Translation(source)
    if "name" in data:
        translation.set("name", data["name"], "name")
    _model(_section(data, "model", translation), translation)
    _peft(data, translation)
    _quantization(_section(data, "quantization", translation), translation)
    loader = _section(data, "dataloader", translation)
    _slurm(_section(data, _SLURM_SECTION, translation), translation)
    _datasets(_section(data, "dataset", translation), _section(data, "validation_dataset", translation),
              loader, _section(data, "validation_dataloader", translation), translation)
    _schedule(_section(data, "step_scheduler", translation), loader, _section(data, "distributed", translation), translation)
    _optimizer(_section(data, "optimizer", translation), _section(data, "lr_scheduler", translation), translation)
    _checkpoint(_section(data, "checkpoint", translation), translation)
    rng = _section(data, "rng", translation)
    if "seed" in rng:
        translation.set("trainer.seed", rng["seed"], "rng.seed")
    if rng.get("ranked") is not None:
        translation.ignore("rng.ranked", "ft seeds each rank's dropout and data order from trainer.seed")
    _unknown(translation, "rng", rng, {"seed", "ranked"})
    dist_env = _section(data, "dist_env", translation)
    if dist_env:
        translation.ignore("dist_env", "ft picks the backend (nccl on GPUs, gloo on CPUs) and its own timeouts")
    loss = _section(data, "loss_fn", translation)
    if loss and not _target(loss).endswith("MaskedCrossEntropy"):
        translation.refuse("loss_fn._target_", f"{_target(loss)}: ft trains with the masked cross-entropy over answer tokens only")
    elif loss:
        translation.ignore("loss_fn", "ft's loss is the same masked cross-entropy over answer tokens")
    wandb = _section(data, "wandb", translation)
    if "project" in wandb:
        translation.set("trainer.wandb_project", wandb["project"], "wandb.project")
    for key in wandb:
        if key != "project":
            translation.ignore(f"wandb.{key}", "ft names the run after the job and writes it into the job folder")
    known = {"name", "model", "peft", "quantization", "dataset", "validation_dataset", "dataloader",
             "validation_dataloader", "step_scheduler", "distributed", "optimizer", "lr_scheduler", "checkpoint",
             "rng", "dist_env", "loss_fn", "wandb", "slurm"}
    for key in data:
        if key not in known:
            translation.refuse(_show(key), "is no AutoModel section ft knows how to translate")
    return translation


# AutoModel's (≤ 0.6) `slurm:` block, which its own launcher rendered into sbatch: ft's settings.
_SLURM_SECTION = "slurm"  # the recipe's key, AutoModel's word (not a scheduler ft runs)
_SLURM_KEYS = {"job_name": "slurm.job_name", "nodes": "trainer.num_nodes", "time": "slurm.time",
               "account": "slurm.account", "partition": "slurm.partition", "container_image": "container.image",
               "extra_mounts": "container.binds", "qos": "slurm.qos", "constraint": "slurm.constraint",
               "mem": "slurm.mem", "cpus_per_task": "slurm.cpus_per_task"}


def _slurm(slurm: dict[str, Any], translation: Translation) -> None:
    for key, ft_key in _SLURM_KEYS.items():
        if key in slurm:
            value = slurm[key]
            if key == "time" and isinstance(value, int):  # YAML 1.1 reads 1:30:00 as 5400 seconds
                value = f"{value // 3600:02d}:{value % 3600 // 60:02d}:{value % 60:02d}"
            translation.set(ft_key, str(value) if key == "time" else value, f"slurm.{key}")
    counts = {k: slurm[k] for k in ("gpus_per_node", "ntasks_per_node") if slurm.get(k) is not None}
    if len(set(counts.values())) > 1:
        translation.refuse("slurm.gpus_per_node", f"{counts['gpus_per_node']} GPUs with {counts['ntasks_per_node']} "
                 "tasks per node: ft runs one task per GPU (trainer.devices)")
    elif counts:
        first, *others = counts
        translation.set("trainer.devices", counts[first], f"slurm.{first}")
        for key in others:
            translation.ignore(f"slurm.{key}", "the same count as trainer.devices")
    for key in ("hf_home", "env_vars", "wandb_key", "hf_token", "nsys_enabled", "master_port", "gpus_per_task",
                "job_dir", "chdir", "exclusive"):
        if key in slurm:
            translation.ignore(f"slurm.{key}", "ft sets the job's environment, folders and rendezvous itself "
                     "(container.env, FT_HOME, hub.cache_dir); secrets stay in your environment")
    _unknown(translation, _SLURM_SECTION, slurm, {*_SLURM_KEYS, "ntasks_per_node", "gpus_per_node", "hf_home", "env_vars",
                                 "wandb_key", "hf_token", "nsys_enabled", "master_port", "gpus_per_task", "job_dir",
                                 "chdir", "exclusive"})


def _model(model: dict[str, Any], translation: Translation) -> None:
    target = _target(model)
    if target and not target.endswith(("from_pretrained", "from_config")):
        translation.refuse("model._target_", f"{target}: ft builds Hugging Face causal LMs (…from_pretrained)")
    if target.endswith("from_config"):
        translation.refuse("model._target_", "from_config (random weights): ft's model.init=random takes model.config")
    if "pretrained_model_name_or_path" in model:
        translation.set("model.path", model["pretrained_model_name_or_path"], "model.pretrained_model_name_or_path")
    if model.get("is_meta_device"):
        translation.set("model.meta_init", True, "model.is_meta_device")
    elif "is_meta_device" in model:
        translation.ignore("model.is_meta_device", "false is ft's default")
    if "torch_dtype" in model:
        dtype = dtypes.name_of(model["torch_dtype"]) if isinstance(model["torch_dtype"], str) else None
        if dtype:
            translation.set("model.dtype", dtype, "model.torch_dtype")
        else:
            translation.refuse("model.torch_dtype", f"{_show(model['torch_dtype'])}: ft trains in bf16 or fp32")
    if "trust_remote_code" in model:
        _set_flag(translation, "model.trust_remote_code", model, "trust_remote_code", "model.trust_remote_code")
    if "attn_implementation" in model:
        translation.set("model.attn_implementation", model["attn_implementation"], "model.attn_implementation")
    _unknown(translation, "model", model, {"pretrained_model_name_or_path", "is_meta_device", "torch_dtype",
                                  "trust_remote_code", "attn_implementation"})


def _peft(data: dict[str, Any], translation: Translation) -> None:
    if "peft" not in data or data["peft"] is None:
        translation.set("peft", "none", "no peft section (full SFT)")
        return
    peft = _section(data, "peft", translation)
    for theirs, ours in (("target_modules", "target_modules"), ("exclude_modules", "exclude_modules"),
                         ("dim", "dim"), ("alpha", "alpha"), ("dropout", "dropout"),
                         ("match_all_linear", "match_all_linear")):
        if theirs in peft:
            translation.set(f"peft.{ours}", peft[theirs], f"peft.{theirs}")
    if "target_modules" not in peft and not peft.get("match_all_linear"):
        translation.data.setdefault("peft", {})
    if "use_triton" in peft:
        translation.ignore("peft.use_triton", "a faster LoRA kernel, same numbers; ft runs peft's LoRA layers")
    if "dropout_position" in peft:
        if peft["dropout_position"] != "pre":
            translation.refuse("peft.dropout_position", f"{_show(peft['dropout_position'])}: ft (peft) applies dropout to the "
                     "LoRA input")
        else:
            translation.ignore("peft.dropout_position", "pre: dropout on the LoRA input, as ft does")
    _unknown(translation, "peft", peft, {"target_modules", "exclude_modules", "dim", "alpha", "dropout", "match_all_linear",
                                "use_triton", "dropout_position"})


def _quantization(quant: dict[str, Any], translation: Translation) -> None:
    if not quant:
        return
    if quant.get("load_in_8bit"):
        translation.refuse("quantization.load_in_8bit", "ft quantizes the frozen base to 4-bit NF4 only (load_in_4bit)")
    if not quant.get("load_in_4bit"):
        translation.ignore("quantization", "load_in_4bit is not set")
        return
    kind = quant.get("bnb_4bit_quant_type", "nf4")
    if kind != "nf4":
        translation.refuse("quantization.bnb_4bit_quant_type", f"{_show(kind)}: ft's QLoRA stores the base in NF4 only")
        return
    translation.set("model.quantization", "nf4", "quantization.load_in_4bit")
    if "bnb_4bit_compute_dtype" in quant:
        translation.ignore("quantization.bnb_4bit_compute_dtype", "ft computes in model.dtype (bf16 on GPUs, fp32 on CPUs)")
    if "bnb_4bit_use_double_quant" in quant:
        translation.ignore("quantization.bnb_4bit_use_double_quant", "torchao's NF4 always quantizes its block scales")
    if "bnb_4bit_quant_storage" in quant:
        translation.ignore("quantization.bnb_4bit_quant_storage", "torchao stores NF4 in its own packed layout")
    _unknown(translation, "quantization", quant, {"load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_compute_dtype",
                                        "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage"})


def _dataset_source(name: str, ds: dict[str, Any], translation: Translation) -> str | None:
    target = _target(ds)
    if target and not target.endswith(_SQUAD_BUILDER):
        translation.refuse(f"{name}._target_", f"{target}: ft reads SQuAD (make_squad_dataset), alpaca and jsonl data; "
                 "give a file or hub dataset as data.path with data.format")
        return None
    source = ds.get("dataset_name", ds.get("path_or_dataset"))
    if source is None:
        translation.refuse(name, "names no dataset_name (or path_or_dataset)")
    return source


def _datasets(train: dict[str, Any], val: dict[str, Any], loader: dict[str, Any], val_loader: dict[str, Any],
              translation: Translation) -> None:
    source = _dataset_source("dataset", train, translation) if train else None
    if source is not None:
        origin = "dataset.dataset_name" if "dataset_name" in train else "dataset.path_or_dataset"
        translation.set("data.path", source, origin)
        translation.set("data.format", "squad", f"dataset._target_ {_SQUAD_BUILDER}")
    if "split" in train:
        translation.set("data.split", train["split"], "dataset.split")
    if "limit_dataset_samples" in train:
        translation.set("data.limit_samples", train["limit_dataset_samples"], "dataset.limit_dataset_samples")
    if "seq_length" in train:
        translation.set("data.max_seq_length", train["seq_length"], "dataset.seq_length")
    _unknown(translation, "dataset", train, {"dataset_name", "path_or_dataset", "split", "limit_dataset_samples", "seq_length"})
    if "batch_size" in loader:
        translation.set("data.micro_batch_size", loader["batch_size"], "dataloader.batch_size")
    if "shuffle" in loader:
        _set_flag(translation, "data.shuffle", loader, "shuffle", "dataloader.shuffle")
    for key in ("_target_", "collate_fn", "num_workers"):
        if key in loader:
            translation.ignore(f"dataloader.{key}", "ft's own loader batches and pads the tokenized records")
    _unknown(translation, "dataloader", loader, {"batch_size", "shuffle", "collate_fn", "num_workers"})
    if not val:
        translation.set("data.val_fraction", 0, "no validation_dataset")
        return
    val_source = _dataset_source("validation_dataset", val, translation)
    if val_source is not None:
        translation.set("data.val_path", val_source, "validation_dataset.dataset_name")
    if "split" in val:
        translation.set("data.val_split", val["split"], "validation_dataset.split")
    if "limit_dataset_samples" in val:
        samples = _count(translation, "validation_dataset.limit_dataset_samples", val["limit_dataset_samples"])
        micro = _count(translation, "dataloader.batch_size", loader.get("batch_size", 1))
        if samples and micro:
            translation.set("trainer.limit_val_batches", -(-samples // micro),  # ceil, in whole numbers
                  f"validation_dataset.limit_dataset_samples={samples} / micro batch {micro}")
    if "batch_size" in val_loader:
        translation.ignore("validation_dataloader.batch_size", "ft validates in micro batches of data.micro_batch_size")
    for key in ("_target_", "collate_fn", "num_workers"):
        if key in val_loader:
            translation.ignore(f"validation_dataloader.{key}", "ft's own loader")
    _unknown(translation, "validation_dataset", val, {"dataset_name", "path_or_dataset", "split", "limit_dataset_samples"})
    _unknown(translation, "validation_dataloader", val_loader, {"batch_size", "collate_fn", "num_workers"})


def _schedule(steps: dict[str, Any], loader: dict[str, Any], dist: dict[str, Any], translation: Translation) -> None:
    for theirs, ours in (("ckpt_every_steps", "checkpoint.every_steps"), ("val_every_steps", "trainer.val_every_steps"),
                         ("num_epochs", "trainer.num_epochs"), ("max_steps", "trainer.max_steps")):
        if theirs in steps:
            translation.set(ours, steps[theirs], f"step_scheduler.{theirs}")
    dp = dist.get("dp_size")
    # A `slurm:` block's nodes × GPUs, translated first, where dp_size is not a count.
    trainer = translation.data.get("trainer", {})
    valid = isinstance(dp, int) and not isinstance(dp, bool) and 0 < dp <= COUNT_LIMIT
    fallback = [trainer.get(key, 1) for key in ("devices", "num_nodes")]
    ranks = dp if valid else (fallback[0] * fallback[1] if all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n <= COUNT_LIMIT for n in fallback) else 1)
    if valid:
        translation.set("trainer.devices", dp, "distributed.dp_size")
    elif "dp_size" in dist:
        translation.ignore("distributed.dp_size", f"{_show(dp)}: every GPU ft is given is data parallel (trainer.devices, "
                 "trainer.num_nodes)")
    if "global_batch_size" in steps:
        translation.set("data.global_batch_size", steps["global_batch_size"], "step_scheduler.global_batch_size")
    elif "grad_acc_steps" in steps:
        micro = _count(translation, "dataloader.batch_size", loader.get("batch_size", 1))
        accumulate = _count(translation, "step_scheduler.grad_acc_steps", steps["grad_acc_steps"])
        if micro and accumulate:
            translation.set("data.global_batch_size", micro * accumulate * ranks,
                  f"dataloader.batch_size {micro} × step_scheduler.grad_acc_steps {accumulate} × {ranks} rank(s)")
    if "local_batch_size" in steps:
        translation.set("data.micro_batch_size", steps["local_batch_size"], "step_scheduler.local_batch_size")
    _unknown(translation, "step_scheduler", steps, {"ckpt_every_steps", "val_every_steps", "num_epochs", "max_steps",
                                          "grad_acc_steps", "global_batch_size", "local_batch_size"})
    target = _target(dist)
    if target and not target.endswith(("FSDP2Manager", "DDPManager")):
        translation.refuse("distributed._target_", f"{target}: ft shards with FSDP2 or replicates with DDP")
    elif target:
        translation.ignore("distributed._target_", "ft picks FSDP2 for full SFT and DDP for LoRA (trainer.strategy=auto)")
    for key in ("tp_size", "cp_size", "pp_size", "ep_size"):
        if dist.get(key) not in (None, 1):
            translation.refuse(f"distributed.{key}", f"{_show(dist[key])}: ft has no tensor, context, pipeline or expert "
                     "parallelism; models that need it are sharded with FSDP2 (trainer.strategy=fsdp2)")
        elif key in dist:
            translation.ignore(f"distributed.{key}", "1, as ft runs")
    if dist.get("sequence_parallel"):
        translation.refuse("distributed.sequence_parallel", "ft has no sequence parallelism")
    elif "sequence_parallel" in dist:
        translation.ignore("distributed.sequence_parallel", "false, as ft runs")
    _unknown(translation, "distributed", dist, {"dp_size", "tp_size", "cp_size", "pp_size", "ep_size", "sequence_parallel"})


def _optimizer(opt: dict[str, Any], sched: dict[str, Any], translation: Translation) -> None:
    target = _target(opt)
    if target:
        name = _OPTIMIZERS.get(target)
        if name is None:
            translation.refuse("optimizer._target_", f"{target}: ft's optimizers are torch.optim.Adam and torch.optim.AdamW")
        else:
            translation.set("optim.name", name, f"optimizer._target_ {target}")
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key in opt:
            value = opt[key]
            if key == "eps" and isinstance(value, str):  # YAML 1.1 habits: `1e-8` written as text
                try:
                    value = float(value)
                except ValueError:
                    pass
            translation.set(f"optim.{key}", value, f"optimizer.{key}")
    _unknown(translation, "optimizer", opt, {"lr", "betas", "eps", "weight_decay", "foreach", "fused"})
    for key in ("foreach", "fused"):
        if key in opt:
            translation.ignore(f"optimizer.{key}", "a kernel choice; ft picks it")
    if "lr_decay_style" in sched:
        style = _SCHEDULES.get(sched["lr_decay_style"]) if isinstance(sched["lr_decay_style"], str) else None
        if style is None:
            translation.refuse("lr_scheduler.lr_decay_style", f"{_show(sched['lr_decay_style'])}: ft decays cosine, linear or "
                     "constant")
        else:
            translation.set("optim.lr_scheduler.name", style, "lr_scheduler.lr_decay_style")
    if "lr_warmup_steps" in sched:
        translation.set("optim.lr_scheduler.warmup_steps", sched["lr_warmup_steps"], "lr_scheduler.lr_warmup_steps")
    if "min_lr" in sched:
        translation.set("optim.lr_scheduler.min_lr", sched["min_lr"], "lr_scheduler.min_lr")
    _unknown(translation, "lr_scheduler", sched, {"lr_decay_style", "lr_warmup_steps", "min_lr"})


def _checkpoint(ckpt: dict[str, Any], translation: Translation) -> None:
    if ckpt.get("enabled") is False:
        translation.refuse("checkpoint.enabled", "false: ft always checkpoints (it is how a preempted job resumes)")
    if "checkpoint_dir" in ckpt:
        translation.ignore("checkpoint.checkpoint_dir", "ft writes checkpoints into the job folder (JOB/checkpoints)")
    fmt = ckpt.get("model_save_format")
    if fmt not in (None, "safetensors"):
        translation.refuse("checkpoint.model_save_format", f"{_show(fmt)}: ft writes safetensors")
    elif fmt:
        translation.ignore("checkpoint.model_save_format", "safetensors, as ft writes")
    if "save_consolidated" in ckpt:
        _set_flag(translation, "checkpoint.hf_every_save", ckpt, "save_consolidated", "checkpoint.save_consolidated")
    _unknown(translation, "checkpoint", ckpt, {"enabled", "checkpoint_dir", "model_save_format", "save_consolidated"})


# --------------------------------------------------------------------------- command line

def translate_override(key: str, value: Any) -> tuple[list[tuple[str, Any]], str | None]:
    """A NeMo-style `key=value` typed on the command line, as ft's keys, with the note to
    print; ([(key, value)], None) when it is ft's own spelling already."""
    word = str(value).lower() if isinstance(value, str) else value
    if key == "peft" and word == "qlora":
        return [("peft", "lora"), ("model.quantization", "nf4")], "peft=qlora read as peft=lora model.quantization=nf4"
    if key == "peft.peft_scheme":
        scheme = "none" if value in (None, "none", "None") else word
        if scheme == "qlora":
            return ([("peft", "lora"), ("model.quantization", "nf4")],
                    "peft.peft_scheme=qlora read as peft=lora model.quantization=nf4")
        return [("peft", scheme)], f"peft.peft_scheme={value} read as peft={scheme}"
    if key in ("quantization.load_in_4bit", "model.quantization.load_in_4bit"):
        quant = "nf4" if value is True else None
        return [("model.quantization", quant)], f"{key}={_show(value)} read as model.quantization={quant or 'null'}"
    return [(key, value)], None
