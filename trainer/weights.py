"""Starting weights made outside `from_pretrained`: a seeded random draw, and, for meta-device
init, each rank's rows read straight from the safetensors files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ftcore import contract
from ftcore.errors import UserError
from ftcore.layout import WEIGHT_INDEX, WEIGHTS

from .hub import hf_token
from .lora import add_lora

Reader = Callable[[str, int, int], torch.Tensor]


def random_model(job, config, **kwargs) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(job.trainer.seed)  # same weights on every rank, and on resume
    return AutoModelForCausalLM.from_config(config, **kwargs)


def reader(job, lm: nn.Module) -> Reader:
    """A function (name, row_start, row_stop) → tensor holding only those rows.

    Names are `lm`'s own (a PeftModel's for LoRA). The values are those the regular path
    starts from: the same seeded draw, the same files, the same peft adapters.
    """
    if job.model.init == "random":
        # Random init has no file to read: build the seeded model on CPU exactly as the
        # regular path does (tests and smoke runs; tiny models only).
        reference = random_model(job, lm.config, **contract.with_dtype(torch.float32))
        if job.peft is not None:
            reference = add_lora(reference, job)
        weights = reference.state_dict()
        return lambda name, start, stop: weights[name][start:stop]

    from huggingface_hub import snapshot_download
    from safetensors import safe_open

    folder = Path(job.model.path)
    if not folder.is_dir():
        folder = Path(snapshot_download(job.model.path, allow_patterns=["*.safetensors", "*.json"], token=hf_token()))
    index = folder / WEIGHT_INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
    else:
        with safe_open(folder / WEIGHTS, framework="pt") as f:
            weight_map = {k: WEIGHTS for k in f.keys()}

    def stored_name(name: str) -> str:  # a PeftModel's name for a base weight → the file's
        return name.removeprefix("base_model.model.").replace(".base_layer.", ".")

    base = [(n, p) for n, p in lm.named_parameters() if "lora_" not in n]
    missing = [n for n, _ in base if stored_name(n) not in weight_map]
    if missing:
        raise UserError(f"{folder} has no weights for {len(missing)} parameters, e.g. {missing[:3]}")
    adapters = fresh_adapters(job, lm.config, base[0][1].dtype) if job.peft is not None else {}
    handles: dict[str, object] = {}

    def read(name: str, start: int, stop: int) -> torch.Tensor:
        if name in adapters:
            return adapters[name][start:stop]
        key = stored_name(name)
        file = weight_map[key]
        if file not in handles:
            handles[file] = safe_open(folder / file, framework="pt")
        return handles[file].get_slice(key)[start:stop]  # reads these rows only

    return read


def fresh_adapters(job, config, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapters `add_lora` gives this job, drawn by peft itself on the CPU.

    peft draws them over a skeleton of the model whose base weights hold no memory (one
    element broadcast to each weight's shape, on the CPU so that peft keeps its adapters
    there): peft's own init, in peft's own order, so the same values as over the real base.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, **contract.with_dtype(dtype))
    stand_ins: dict[int, nn.Parameter] = {}  # by identity: tied weights stay tied
    for module in skeleton.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in stand_ins:
                stand_ins[id(param)] = nn.Parameter(torch.zeros((), dtype=param.dtype).expand(param.shape), requires_grad=False)
            module._parameters[name] = stand_ins[id(param)]
    peft_model = add_lora(skeleton, job)
    return {n: p.detach() for n, p in peft_model.named_parameters() if "lora_" in n}
