"""The tokenizer: from model.tokenizer, else the model's folder, else ft's tiny one."""

from __future__ import annotations

from ftcore import shipped
from ftcore.errors import UserError

from .hub import hf_token


def tokenizer_source(job) -> str:
    if job.model.tokenizer:
        return job.model.tokenizer
    if job.model.path:
        return job.model.path
    return str(shipped.shipped_file("tiny_tokenizer"))  # init=random with no tokenizer: ft's tiny one


def load_tokenizer(job):
    from transformers import AutoTokenizer

    source = shipped.expand(tokenizer_source(job))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, token=hf_token(), trust_remote_code=job.model.trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load the tokenizer from {source}: {e}") from None
    if tokenizer.pad_token_id is None:
        # Pad positions are masked out of attention and loss, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
