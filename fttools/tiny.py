"""The tiny model ft ships, as pieces to build on: its config, its tokenizer, a job around it, a
run of that job in this process and the losses it logged.

The tests and the benches (`bench/gpu_suite.py`) train it; so can anyone who wants to see ft
work on a laptop, offline:

    from fttools import tiny
    code = tiny.train(Path("run"), tiny.tiny_job(peft=None))   # full SFT, four steps on the CPU
    tiny.train_losses(Path("run"))                             # {1: 5.96, 2: 5.78, 3: 5.88, 4: 5.59}

The model is the `tiny` factory's (a two-layer random Llama, 64 wide) and the tokenizer the
byte-level one ft ships (`ft:tiny_tokenizer`, 384 tokens); nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from ftcore import layout, records, shipped
from ftcore.schema import deep_merge

TINY_TOKENIZER = shipped.data_dir() / "tiny_tokenizer"

# The `tiny` factory's model, so that a test of the tiny model is a test of the factory.
TINY_LLAMA: dict[str, Any] = yaml.safe_load((shipped.bundled("factories") / "tiny.yaml").read_text())["model"]["config"]


def tiny_job(*presets: dict, **sections) -> dict:
    """A LoRA job on the tiny model and tiny_qa, four steps on the CPU, as a plain dict.

    `presets` (dicts of sections) and then keyword sections are merged over the defaults
    (`ftcore.schema.deep_merge`); a section given as None (`peft=None`) replaces it.
    """
    job = {
        "name": "test",
        "model": {"init": "random", "config": TINY_LLAMA},
        "peft": {"dim": 8, "alpha": 16, "target_modules": ["*_proj"]},
        "data": {
            "path": "ft:tiny_qa.jsonl",
            "format": "squad",
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "max_seq_length": 64,
            "val_fraction": 0.05,
        },
        "trainer": {"accelerator": "cpu", "max_steps": 4, "seed": 7, "grad_clip": 1.0},
        "optim": {"lr": 1e-3, "lr_scheduler": {"name": "cosine", "warmup_steps": 1}},
        "checkpoint": {"keep_last": None},
        "container": {"runtime": "none"},
    }
    for override in (*presets, sections):
        job = deep_merge(job, override)
    return copy.deepcopy(job)  # shares nothing with TINY_LLAMA or the overrides


def train(run_dir: Path, raw: dict, on_step=None) -> int:
    """Validate the job `raw` and train it in this process, writing into `run_dir`; the exit code."""
    from ftcore.schema import validate
    from trainer.train import run

    return run(validate(raw), Path(run_dir), on_step=on_step)


def read_metrics(run_dir: Path) -> list[dict]:
    """Every line of the run's metrics.jsonl; a line that is not JSON raises (a test must see it)."""
    path = Path(run_dir) / layout.METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train_losses(run_dir: Path) -> dict[int, float]:
    """{step: training loss} of every logged step."""
    return {r[records.STEP]: r[records.LOSS] for r in read_metrics(run_dir) if records.LOSS in r}


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


def tiny_llama(attn: str = "sdpa", seed: int = 0, **overrides):
    """The tiny Llama in memory, random weights drawn from `seed`, in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {k: v for k, v in {**TINY_LLAMA, **overrides}.items() if k != "model_type"}
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **settings), attn_implementation=attn).eval()


def save_tiny_model(folder: Path, seed: int = 0, config: dict | None = None) -> Path:
    """`tiny_llama` (with `config`'s keys over the tiny one's) on disk with the tiny tokenizer,
    split over several safetensors files (with an index), as a hub download would be."""
    tiny_llama(seed=seed, **(config or {})).save_pretrained(folder, max_shard_size="100KB")
    tiny_tokenizer().save_pretrained(folder)
    return folder


def model_examples() -> list:
    """Three examples of random tokens with a short answer at the end (loss on the answer only)."""
    import torch
    from trainer.samples import IGNORE_INDEX, Sample

    rng = torch.Generator().manual_seed(0)
    lengths = [(7, 3), (5, 2), (9, 4)]  # (length, answer tokens at the end)
    out = []
    for n, answer in lengths:
        ids = torch.randint(3, TINY_LLAMA["vocab_size"], (n,), generator=rng, dtype=torch.int32)
        labels = ids.clone()
        labels[: n - answer] = IGNORE_INDEX
        out.append(Sample(ids, labels, (n,)))
    return out
