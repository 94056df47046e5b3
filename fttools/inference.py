"""Load a checkpoint to use it: a full model, or a base with its LoRA adapter; greedy text.

    ft generate JOB --question "How old is Ada?" --context "Ada is 36."   # the job's prompt format
    ft generate JOB "any raw text to continue" --max-new-tokens 16

Used by `ft generate`, `ft eval` and `ft merge` (the CLI imports this lazily: it needs torch,
transformers and peft). Prompts are tokenized the way training tokenized them: the
tokenizer's own leading special tokens (Llama's bos), then the text without them.
"""

from __future__ import annotations

import torch

from ftcore.formats import FORMATS
from ftcore.layout import Checkpoint
from ftcore import contract
from ftcore.errors import UserError

from trainer.hub import hf_token
from trainer.model import DTYPES


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_tokenizer(ckpt: Checkpoint):
    """The tokenizer saved with the checkpoint: the one training used."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load the tokenizer saved in {ckpt.path}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_base(ckpt: Checkpoint, dtype: torch.dtype | str = "auto", device: torch.device | None = None):
    """The base model a LoRA checkpoint names in adapter_config.json."""
    from transformers import AutoModelForCausalLM

    base = ckpt.base
    if not base:
        raise UserError(f"{ckpt.path / 'adapter_config.json'} names no base_model_name_or_path")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **contract.with_dtype(dtype), token=hf_token(), **_placement(device))
    except OSError as err:
        raise UserError(f"cannot load the base model {base} named by {ckpt.path / 'adapter_config.json'}: {err}",
                        hint="a hub id needs network and, for gated models, HF_TOKEN in the environment") from None
    return model.to(device) if device is not None else model


def _placement(device: torch.device | None) -> dict:
    """Straight onto the GPU when there is one, instead of via host memory."""
    return {"device_map": {"": device}} if device is not None and device.type == "cuda" else {}


def load_model(ckpt: Checkpoint, dtype: str | None = None, device: torch.device | None = None):
    """A model in eval mode: the full model, or the base with the adapter applied (not merged).

    `dtype` (bf16/fp16/fp32) defaults to the dtype the weights were saved in.
    """
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    torch_dtype = DTYPES[dtype] if dtype else "auto"
    if ckpt.is_lora:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_base(ckpt, torch_dtype, device), ckpt.path)
    else:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, **contract.with_dtype(torch_dtype), **_placement(device)).to(device)
    return model.eval()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    from trainer.samples import special_affixes

    prefix, _ = special_affixes(tokenizer)
    return list(prefix) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy continuations of token-id prompts, decoded without special tokens.

    Batches are left-padded so every prompt ends where generation starts; the attention
    mask keeps padding out, and generate derives position ids from it.
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, use_cache=True, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def trained_on_chat(ckpt: Checkpoint) -> bool | None:
    """Whether the checkpoint's job trained on chat `messages` (jsonl records with messages, or
    conversational preference pairs):
    read from its data file's first records; None when that cannot be told here (a hub
    dataset, a file not on this machine)."""
    from pathlib import Path

    from ftcore import shipped
    from ftcore.formats import first_records
    from ftcore.schema import looks_local

    data = ckpt.job_config.get("data") or {}
    if data.get("format") not in ("jsonl", "preference"):  # (preference: conversational pairs are chat)
        return False
    path = str(data.get("path") or "")
    if not path or not looks_local(path):
        return None
    try:
        records = first_records(Path(shipped.expand(path)).expanduser())
    except UserError:
        return None
    return any("messages" in record or isinstance(record.get("chosen"), list) for _, record in records) if records else None


def chat_ids(ckpt: Checkpoint, tokenizer, message: str, system: str | None = None) -> list[int]:
    """A chat job's prompt, as training rendered conversations: the tokenizer's chat template
    (which writes its own bos) up to the assistant's turn, tokenized with no specials added."""
    chat = trained_on_chat(ckpt)
    if chat is False:
        fmt = (ckpt.job_config.get("data") or {}).get("format")
        why = f"its job trained on data.format={fmt}" if fmt else f"{ckpt.path} comes from no ft job"
        fields = {"squad": "--question and --context", "alpaca": "--instruction"}.get(fmt or "", "a raw PROMPT")
        raise UserError(f"--message is a chat turn, but {why} without chat messages: give {fields} instead")
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"--message: the tokenizer of {ckpt.path} has no chat template to render it with")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": message}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def job_prompt(ckpt: Checkpoint, fields: dict[str, str]) -> str:
    """The prompt the checkpoint's job trained on, filled with `fields` (its template, or the
    format's default): what the model saw before each answer, up to where the answer starts."""
    from trainer.formats import prompt_text
    from trainer.records import Record

    job_data = ckpt.job_config.get("data") or {}
    fmt = job_data.get("format")
    spec = FORMATS.get(fmt)
    if spec is None or spec.prompt_fields is None:
        given = ", ".join(f"--{k}" for k in fields)
        why = (f"its job trained on data.format={fmt}" if fmt else f"{ckpt.path} comes from no ft job")
        instead = ("--message (and --system): its job trained on chat messages" if trained_on_chat(ckpt)
                   else "the whole prompt as text")
        raise UserError(f"{given}: {why}, which has no such prompt fields; give {instead} instead")
    required, optional = spec.prompt_fields
    wrong = sorted(set(fields) - set(required) - set(optional)) + [k for k in required if k not in fields]
    if wrong:
        raise UserError(f"a {fmt} job's prompt is built from {' and '.join('--' + k for k in required)}"
                        + (f" (and optionally {', '.join('--' + k for k in optional)})" if optional else "")
                        + f"; check {', '.join('--' + k for k in wrong)}")
    return prompt_text(Record("the command line", fields), fmt, job_data.get("prompt_template"))


def generate(ckpt: Checkpoint, prompt: str | None, max_new_tokens: int = 64, message: str | None = None,
             system: str | None = None) -> str:
    """`ft generate`: the greedy continuation of one prompt; with `message` (and `system`),
    the assistant's answer to one chat turn. Every refusal comes before the model loads."""
    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    tokenizer = load_tokenizer(ckpt)
    ids = chat_ids(ckpt, tokenizer, message, system) if message is not None else prompt_ids(tokenizer, prompt)
    model = load_model(ckpt)
    return greedy(model, tokenizer, [ids], max_new_tokens)[0]
