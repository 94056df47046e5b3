"""Fold a LoRA adapter into its base: one ordinary Hugging Face model folder.

    ft merge JOB [--out DIR] [--dtype bf16]

The result loads with ``AutoModelForCausalLM.from_pretrained(DIR)`` and serves with vLLM
without LoRA support. The merge runs on the CPU, in the output dtype: the base is loaded
in that dtype, peft adds ``B @ A * alpha / r`` (computed from the fp32 adapter) to each
adapted weight, and the sum is rounded once to the output dtype, as it would be anyway.
Host memory needed: about the size of the output (16 GB for an 8B model in bf16).
"""

from __future__ import annotations

from pathlib import Path

from fttools import source_stamp
from ftcore import dtypes
from ftcore.files import check_output, made_from, output_folder
from ftcore.layout import Checkpoint
from ftcore import contract
from ftcore.errors import UserError

from .inference import load_base, load_tokenizer
from trainer.hub import hf_token
from trainer.model import DTYPES


def base_dtype(ckpt: Checkpoint) -> str:
    """The dtype the base model's config says its weights are in (fp32 when it says nothing)."""
    from transformers import AutoConfig

    try:
        saved = contract.config_dtype(AutoConfig.from_pretrained(ckpt.base, token=hf_token()))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the config of the base model {ckpt.base}: {err}") from None
    return dtypes.name_of(saved) or "fp32"


def merge(ckpt: Checkpoint, out: Path | None = None, dtype: str | None = None, overwrite: bool = False) -> Path:
    """`ft merge`: write the merged model to `out` (default: beside the checkpoint). A folder
    this checkpoint was merged into before, with the same dtype, is kept as it is."""
    if not ckpt.is_lora:
        raise UserError(f"{ckpt.path} is a full model (an SFT checkpoint), not a LoRA adapter: there is "
                        "nothing to merge",
                        hint="it already loads with AutoModelForCausalLM; `ft export CKPT --to vllm` "
                        "copies it into a serving folder")
    out = out or ckpt.default_output("merged")
    check_output(out, True, source=ckpt.path)  # never inside the checkpoint, up to date or not
    dtype = dtype or base_dtype(ckpt)
    stamp = source_stamp(ckpt, "merged", dtype=dtype)
    if not overwrite and made_from(out, stamp):
        return out  # complete and current: nothing to do
    out = check_output(out, overwrite)  # before loading gigabytes
    with output_folder(out, overwrite, stamp) as tmp:
        save_merged(ckpt, tmp, dtype)
    return out


def save_merged(ckpt: Checkpoint, folder: Path, dtype: str) -> None:
    """Base + adapter → merged weights, config, generation config and tokenizer in `folder`."""
    from peft import PeftModel

    torch_dtype = DTYPES[dtype]
    model = PeftModel.from_pretrained(load_base(ckpt, torch_dtype), ckpt.path)
    merged = model.merge_and_unload(safe_merge=True)  # safe_merge: refuse NaNs instead of writing them
    merged.to(torch_dtype)  # adapters stay fp32 in peft; nothing of them remains after the merge
    merged.config.use_cache = True  # the trainer saves False (no KV cache while training)
    contract.set_config_dtype(merged.config, torch_dtype)
    merged.save_pretrained(folder)
    load_tokenizer(ckpt).save_pretrained(folder)
