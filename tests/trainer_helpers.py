"""Shared pieces for the trainer tests: tiny data, every family as a tiny model, and launching N
local processes.

The tiny model, its tokenizer, a job around it and an in-process run are `fttools.tiny`'s (the
benches build on them too); they are imported here so the tests find them in one place. Jobs are
plain dicts validated by the one schema, so every test exercises the same path as
``python -m trainer --config``; all of it runs on CPU in seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from fttools.tiny import (TINY_LLAMA, TINY_TOKENIZER, model_examples, read_metrics, save_tiny_model, tiny_job,  # noqa: F401
                          tiny_llama, tiny_tokenizer, train, train_losses)

REPO = Path(__file__).resolve().parent.parent
TINY_QA = REPO / "factories" / "data" / "tiny_qa.jsonl"

# Variables that would make a test process think it is one rank of a larger job.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
             "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "FT_JOB_DIR")


def require_torchao() -> None:
    """QLoRA's tests fail, never skip, without torchao: a skipped QLoRA test would pass CI having
    checked nothing. .ci/run installs it (the quant extra)."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("torchao") is None:
        pytest.fail("torchao is not installed, and the QLoRA tests need it: pip install '<checkout>[quant]' "
                    "(.ci/run installs it)", pytrace=False)


def validate(raw: dict):
    from ftcore.schema import Job

    return Job.model_validate(raw)


def write_config(job_dir: Path, raw: dict) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Two processes on two cores: one thread each, or they fight over the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def start(config: Path, nprocs: int) -> list[subprocess.Popen]:
    """Start `nprocs` trainer processes the way torchrun would (RANK/WORLD_SIZE/MASTER_*)."""
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-m", "trainer", "--config", str(config)],
            cwd=REPO,
            env=clean_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(nprocs)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Wait for every process; kill the rest if one hangs. Output is kept for assertion messages."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


def launch(config: Path, nprocs: int, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    return finish(start(config, nprocs), timeout)


def describe(results: list[subprocess.CompletedProcess]) -> str:
    return "\n".join(f"--- rank {r} exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}" for r, p in enumerate(results))


# A tiny Llama NF4 can hold: every projection has whole 64 × 256 blocks of scales, also when
# split over 2 ranks (k and v: 2 heads × 64 = 128 rows × 256).
NF4_LLAMA = {**TINY_LLAMA, "hidden_size": 256, "intermediate_size": 512}


def gpu_dtypes_on_cpu(job, layout) -> str:
    """ftcore.policy.compute_dtype as on a GPU: `model.dtype` (bf16) on this CPU too, so the
    GPU's dtype policy (bf16 frozen base and compute, fp32 adapters, master weights and Adam
    state) runs in a CPU test."""
    return job.model.dtype


def held_run(rank: int, world: int, config: str, port: int, gpu_dtypes: bool = False) -> None:
    """One rank of a job trained in this process (torch.multiprocessing for world > 1); writes
    `held-<rank>.json` beside the config: the peak bytes of weights, gradients and optimizer
    state the trainer held (trainer.memory), at every micro batch and step. `gpu_dtypes`: with
    the GPU's dtype policy (`gpu_dtypes_on_cpu`)."""
    import torch

    from ftcore import policy
    from ftcore.schema import load_job
    from trainer import memory
    from trainer.train import run

    if gpu_dtypes:
        policy.compute_dtype = gpu_dtypes_on_cpu

    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        torch.set_num_threads(1)
    peak = {"weights": 0, "gradients": 0, "optimizer": 0}

    def watch(event, built, optimizer):
        now = memory.held(built.module, optimizer)
        for key in ("weights", "gradients") if event == "backward" else ("optimizer",):
            peak[key] = max(peak[key], now[key])

    code = run(load_job(config), Path(config).parent, watch=watch)
    (Path(config).parent / f"held-{rank}.json").write_text(json.dumps({"exit": code, **peak}))


def assert_same_tensors(a: dict, b: dict, exact: bool = True) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)


# --- small data, by hand ---------------------------------------------------------------------------

SQUAD = {"context": "Ada lives in Oslo.", "question": "Where does Ada live?", "answers": {"text": ["Oslo"], "answer_start": [13]}}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tokenized(tok, records, fmt, max_len=256, template=None):
    """(samples, stats) of `records` tokenized as the trainer does."""
    from trainer.samples import Stats, tokenize

    stats = Stats()
    return tokenize(records, fmt, tok, max_len, template, stats), stats


def trained_text(tok, sample) -> str:
    """The text of the positions that carry loss."""
    from trainer.samples import IGNORE_INDEX

    ids = [i for i, l in zip(sample.input_ids.tolist(), sample.labels.tolist()) if l != IGNORE_INDEX]
    return tok.decode(ids)


def sample_of(ids: list[int], labels: list[int]):
    import torch
    from trainer.samples import Sample

    return Sample(torch.tensor(ids, dtype=torch.int32), torch.tensor(labels, dtype=torch.int32), (len(ids),))


def numbered(n: int) -> list:
    """n two-token samples; sample i's first token is i."""
    return [sample_of([i, i], [-100, i]) for i in range(n)]


def ids_of(batches) -> list[list[int]]:
    return [[int(s.input_ids[0]) for s in mb] for mb in batches]


# --- every model family ft claims, as a tiny random model -----------------------------------------

_SMALL = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 384, "max_position_embeddings": 512,
          "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}
# Sliding windows of 4 tokens, shorter than the test examples, so that a path ignoring them fails.
TINY_FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": 4},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": {"num_experts": 4, **_MOE},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 4},
    "gemma": {},
    "gemma2": {"sliding_window": 4},
    "gemma3_text": {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
    "phi3": {},
    "phi": {"partial_rotary_factor": 0.5},
    "olmo2": {},
    "granite": {"embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 2.0},
    "cohere": {"logit_scale": 0.5},
    "smollm3": {"no_rope_layer_interval": 2},
    "stablelm": {"partial_rotary_factor": 0.25},
    "gpt_neox": {"rotary_pct": 0.25},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "falcon": {"head_dim": None, "num_kv_heads": 1, "multi_query": True},
    "gpt_oss": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 4},
    "deepseek_v3": {"head_dim": None, "num_key_value_heads": 4, "n_routed_experts": 4, "n_shared_experts": 1, **_MOE, "q_lora_rank": 16,
                    "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
                    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "qwen3_next": {"num_experts": 4, **_MOE, "shared_expert_intermediate_size": 32, "linear_num_value_heads": 4,
                   "linear_num_key_heads": 2, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
                   "full_attention_interval": 2},
}


def tiny_family(model_type: str) -> dict:
    """model.config of a tiny random `model_type` (its transformers config class's own keys)."""
    settings = {**_SMALL, **TINY_FAMILIES[model_type], "model_type": model_type}
    return {k: v for k, v in settings.items() if v is not None}
