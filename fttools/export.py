"""A checkpoint as a folder that vLLM serves, with the exact `vllm serve` command beside it.

    ft export JOB --to vllm                 # SFT: the model; LoRA: the adapter
    ft export JOB --to vllm --merge         # LoRA folded into its base: one plain model

* Full model (SFT): weights, config.json, generation_config.json and tokenizer, without the
  trainer's resume state; ``vllm serve OUT``.
* LoRA adapter: ``adapter_model.safetensors`` with peft's key names
  (``base_model.model.<module>.lora_A.weight``) and ``adapter_config.json`` (r, lora_alpha,
  target_modules, base_model_name_or_path), plus the tokenizer;
  ``vllm serve BASE --enable-lora --lora-modules NAME=OUT``. vLLM decides which layers
  an adapter touches from the tensor names; what it cannot load at all (DoRA,
  modules_to_save, bias, non-standard initialisations) is refused here, with ``--merge``
  as the way out.

Torch-free apart from ``--merge``: the checks read the safetensors header (JSON) directly.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcore.files import check_output, expand, made_from, output_folder
from ftcore.layout import ADAPTER_CONFIG, Checkpoint, model_files
from ftcore.errors import UserError

TARGETS = ("vllm",)
# What vLLM's own loader does with a LoRA adapter, per base architecture, as read from vLLM 0.33.0's
# Python (its model classes' SupportsLoRA, its LoRA manager's MoE formats) on CPU:
# tests/fttools/test_vllm_rules.py holds these to the installed vllm when there is one.
VLLM_VERSION = "0.33.0"
VLLM_NO_LORA = {"GPT2LMHeadModel": "GPT-2", "FalconForCausalLM": "Falcon", "StableLmForCausalLM": "StableLM"}
# peft's MoE expert adapters (target_parameters) that vLLM applies, and the serve flags each needs;
# `is_3d` adds "is_3d_lora_weight": true to the --lora-modules entry.
VLLM_EXPERT_LORA = {"GptOssForCausalLM": ((), False), "Qwen3MoeForCausalLM": (("--enable-mixed-moe-lora-format",), True)}
VLLM_EXPERT_WHY = {"MixtralForCausalLM": "vLLM names Mixtral's experts block_sparse_moe.experts, peft's adapter "
                                         "mlp.experts: it loads the adapter and never applies it"}
# vLLM sizes its LoRA buffers for --max-lora-rank (default 16), one of these values.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_RANK = 16
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(lora_A|lora_B)\.weight$")
_EMBEDDING_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(lora_embedding_A|lora_embedding_B)$")
_UNSERVABLE_INITS = ("pissa", "olora", "corda", "loftq", "eva")
# Files a served model needs no copy of: the trainer's state and peft's empty model card.
_SKIPPED = ("README.md",)


@dataclass
class Exported:
    out: Path
    command: str
    warnings: list[str] = field(default_factory=list)
    up_to_date: bool = False  # the folder was made before from the same checkpoint, the same way


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file: tensor names → dtype, shape, offsets."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError) as err:
        raise UserError(f"{path} is not a readable safetensors file ({err})") from None
    header.pop("__metadata__", None)
    return header


def base_architecture(base: str | None) -> str | None:
    """The base model's architecture (config.json's `architectures`), where its folder is here."""
    try:
        config = json.loads((expand(base) / "config.json").read_text()) if base else {}
    except (OSError, ValueError, UserError):
        return None
    found = config.get("architectures") if isinstance(config, dict) else None
    return found[0] if isinstance(found, list) and found and isinstance(found[0], str) else None


def check_adapter(folder: Path, architecture: str | None = None) -> tuple[list[str], list[str]]:
    """(problems that stop vLLM loading the adapter, warnings), from its two files and the base
    model's architecture (None: not known here)."""
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    problems, warnings = [], []
    if architecture in VLLM_NO_LORA:
        problems.append(f"vLLM {VLLM_VERSION} serves no LoRA adapter on {VLLM_NO_LORA[architecture]} "
                        f"({architecture} does not implement vLLM's SupportsLoRA)")
    elif architecture is None:
        warnings.append(f"the base model's config.json is not here: vLLM {VLLM_VERSION} refuses LoRA on "
                        f"{', '.join(VLLM_NO_LORA.values())} (then export with --merge)")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')}: vLLM serves LoRA adapters only")
    for key in ("r", "lora_alpha", "target_modules"):
        if config.get(key) in (None, "", []):
            problems.append(f"{ADAPTER_CONFIG} has no {key}, which vLLM requires")
    if config.get("use_dora"):
        problems.append("a DoRA adapter (use_dora): vLLM does not load DoRA")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']}: vLLM loads no fully trained modules "
                        "beside the LoRA matrices")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append(f"trained biases (bias={config.get('bias')!r}, lora_bias={config.get('lora_bias')}): "
                        "vLLM loads LoRA matrices without biases")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_UNSERVABLE_INITS):
        problems.append(f"init_lora_weights={init!r} changes the base weights when peft loads it; vLLM "
                        "serves the unchanged base")
    if config.get("target_parameters") and architecture not in VLLM_EXPERT_LORA:
        why = VLLM_EXPERT_WHY.get(architecture, f"vLLM {VLLM_VERSION} applies peft's expert adapters on "
                                                f"{', '.join(VLLM_EXPERT_LORA)} only"
                                                + ("" if architecture else " (this base's architecture is not known here)"))
        problems.append(f"target_parameters {config['target_parameters'][:2]}... (LoRA on MoE experts' 3-D weights): "
                        f"{why}. Export with --merge, or train with peft.experts=false")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        warnings.append("rank_pattern/alpha_pattern give layers their own r or alpha; vLLM versions before "
                        "0.11 apply one r and alpha to every layer")
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices (trained embedding rows): vLLM does not load them")

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        problems.append(f"{weights.name} is missing (vLLM reads adapters from safetensors)")
        return problems, warnings
    names = list(safetensors_header(weights))
    odd = [n for n in names if not (_LORA_KEY.match(n) or _EMBEDDING_KEY.match(n))]
    if odd:
        problems.append(f"{len(odd)} tensor(s) in {weights.name} are not LoRA matrices under peft's names "
                        f"(base_model.model.<module>.lora_A.weight), e.g. {odd[:3]}")
    modules = {(_LORA_KEY.match(n) or _EMBEDDING_KEY.match(n))["module"] for n in names if n not in odd}
    outer = sorted({m.rsplit(".", 1)[-1] for m in modules} & {"lm_head", "embed_tokens"})
    if outer:
        warnings.append(f"LoRA on {', '.join(outer)}: recent vLLM versions load adapters on the decoder's "
                        "linear layers only; if yours refuses it, export with --merge")
    if not modules and not odd:
        problems.append(f"{weights.name} holds no LoRA tensors")
    return problems, warnings


def max_lora_rank(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank r."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise UserError(f"LoRA rank {r} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]}): export with --merge")


def serve_name(ckpt: Checkpoint) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ckpt.label).strip("-") or "adapter"


def export(ckpt: Checkpoint, to: str = "vllm", out: Path | None = None, merge: bool = False,
           dtype: str | None = None, overwrite: bool = False) -> Exported:
    """`ft export`: check first, then write `out` (default beside the checkpoint) in one rename.
    A folder this checkpoint was exported into before, the same way, is kept as it is."""
    if to not in TARGETS:
        raise UserError(f"--to {to}: ft exports for {', '.join(TARGETS)}")
    if merge and not ckpt.is_lora:
        raise UserError(f"--merge: {ckpt.path} is already a full model (an SFT checkpoint); export it without --merge")
    if dtype and not merge:
        raise UserError("--dtype applies with --merge only (an export copies the weights as they are)")
    lora = ckpt.is_lora and not merge
    out = out or ckpt.default_output("vllm-lora" if lora else "vllm")
    from fttools import source_stamp

    stamp = source_stamp(ckpt, f"{to}-export", merge=merge, dtype=dtype)
    check_output(out, True, source=ckpt.path)  # never inside the checkpoint, up to date or not
    if not overwrite and made_from(out, stamp):
        command = (expand(out) / "vllm_serve.txt").read_text().strip()
        return Exported(expand(out), command, [], up_to_date=True)
    out = check_output(out, overwrite)
    warnings: list[str] = []
    if lora:
        architecture = base_architecture(ckpt.base)
        problems, warnings = check_adapter(ckpt.path, architecture)
        if problems:
            raise UserError(*problems, hint="`ft export CKPT --to vllm --merge` folds the adapter into its base, "
                                             "which vLLM serves as a plain model")
        config = json.loads((ckpt.path / ADAPTER_CONFIG).read_text())
        extra, is_3d = VLLM_EXPERT_LORA.get(architecture, ((), False)) if config.get("target_parameters") else ((), False)
        module = (json.dumps({"name": serve_name(ckpt), "path": str(out.absolute()), "is_3d_lora_weight": True})
                  if is_3d else f"{serve_name(ckpt)}={out.absolute()}")
        flags = ["--enable-lora", *extra, "--lora-modules", module]
        if int(config["r"]) > VLLM_DEFAULT_MAX_RANK:
            flags += ["--max-lora-rank", str(max_lora_rank(int(config["r"])))]
        command = shlex.join(["vllm", "serve", str(ckpt.base), *flags])
        if not Path(str(ckpt.base)).is_absolute() and Path(str(ckpt.base)).exists():
            warnings.append(f"the base model is a relative path ({ckpt.base}): run vllm serve from {Path.cwd()}")
    else:
        command = shlex.join(["vllm", "serve", str(out.absolute()), "--served-model-name", serve_name(ckpt)])

    with output_folder(out, overwrite, stamp) as tmp:
        if merge:
            from fttools.merge import base_dtype, save_merged  # torch, transformers, peft: only here

            save_merged(ckpt, tmp, dtype or base_dtype(ckpt))
        else:
            _copy_model(ckpt, tmp, lora)
        (tmp / "vllm_serve.txt").write_text(command + "\n")
        (tmp / "README.md").write_text(_readme(ckpt, out, command, lora, merge))
    return Exported(out, command, warnings)


def _copy_model(ckpt: Checkpoint, dest: Path, lora: bool) -> None:
    for path in model_files(ckpt.path):
        relative = path.relative_to(ckpt.path)
        if str(relative) in _SKIPPED:
            continue
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / relative)
    if lora:
        config = json.loads((dest / ADAPTER_CONFIG).read_text())
        config["inference_mode"] = True
        if float(config["lora_alpha"]).is_integer():
            config["lora_alpha"] = int(config["lora_alpha"])  # vLLM declares it an int
        (dest / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return
    config = json.loads((dest / "config.json").read_text())
    config["use_cache"] = True  # the trainer saves False (no KV cache while training)
    (dest / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if not (dest / "generation_config.json").exists():
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _readme(ckpt: Checkpoint, out: Path, command: str, lora: bool, merge: bool) -> str:
    if lora:
        what = f"A LoRA adapter for `{ckpt.base}`, exported by ft from `{ckpt.path}`."
        load = (f"    from peft import PeftModel\n    from transformers import AutoModelForCausalLM\n"
                f"    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(ckpt.base)!r}), {str(out)!r})\n")
    else:
        what = (f"`{ckpt.path}` merged into its base `{ckpt.base}` by ft." if merge else
                f"A fine-tuned model exported by ft from `{ckpt.path}`.")
        load = f"    from transformers import AutoModelForCausalLM\n    model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
    return (f"# {serve_name(ckpt)}\n\n{what}\n\nServe it with vLLM (also in `vllm_serve.txt`):\n\n    {command}\n\n"
            f"Load it in Python:\n\n{load}")
