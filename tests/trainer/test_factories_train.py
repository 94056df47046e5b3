"""Every factory ft ships trains: shrunk to a tiny model of its own family, 2 steps on CPU.

Each factory keeps what makes it itself — model_type, attention layout (query heads per
key/value head), tied embeddings, LoRA settings and globs, data format and prompt template,
method, strategy, quantization, meta-device init, activation checkpointing — and loses only
size: 2 decoder layers, ft's 384-token tokenizer, a small file of its data format, one CPU
process. It must train 2 steps to a checkpoint that loads (a PEFT adapter over its base, or
a full model). A factory added to factories/ is covered without being named here.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
from trainer_helpers import TINY_QA, train, validate

from ftcore import layout
from ftcore.schema import job_to_dict
from launcher import config, plan

pytestmark = pytest.mark.train

FACTORIES = [f.name for f in config.list_factories() if f.error is None]


def tiny_data(fmt: str, folder) -> str:
    """A small file of format `fmt`, from the QA set ft ships."""
    if fmt == "squad":
        return str(TINY_QA)
    if fmt == "preference":  # prompt, chosen, rejected: ft's own small preference set
        return str(TINY_QA.with_name("tiny_prefs.jsonl"))
    qa = [json.loads(line) for line in TINY_QA.read_text().splitlines()[:40]]
    if fmt == "alpaca":
        rows = [{"instruction": r["question"], "input": r["context"], "output": r["answers"]["text"][0]} for r in qa]
    else:
        rows = [{"prompt": f"{r['context']} {r['question']}", "completion": r["answers"]["text"][0]} for r in qa]
    path = folder / f"tiny-{fmt}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny_model_config(job) -> dict:
    """The factory's architecture at toy size: same model_type, GQA ratio and tying."""
    if job.model.init == "random":
        return dict(job.model.config)
    dims = plan.model_dims(job)
    ratio = dims.heads // dims.kv_heads
    kv = 1 if ratio > 1 else 2
    heads = ratio * kv
    hidden = heads * 16
    return {"model_type": dims.model_type,
            "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": 384,
            "tie_word_embeddings": dims.tied, "max_position_embeddings": 512}


def shrink(name: str, folder) -> dict:
    job = config.resolve(name, []).job
    raw = job_to_dict(job)
    raw["model"].update(init="random", path=None, config=tiny_model_config(job), tokenizer="ft:tiny_tokenizer",
                        parameters_b=None, cpu_offload=False)  # offload is CUDA's; the rest is kept
    raw["resume"]["restore_config"]["path"] = None
    raw["data"].update(path=tiny_data(job.data.format, folder), val_path=None, limit_samples=None, max_seq_length=64,
                       global_batch_size=4, micro_batch_size=2, val_fraction=0.1)
    raw["trainer"].update(accelerator="cpu", num_nodes=1, devices=1, max_steps=2, val_every_steps=None,
                          limit_val_batches=1, compile=False, tensorboard=False, wandb_project=None)
    raw["checkpoint"].update(every_steps=None)
    raw["container"] = {"runtime": "none"}
    return raw


@pytest.mark.parametrize("name", FACTORIES)
def test_every_factory_trains_in_shrunk_form(name, tmp_path):
    from transformers import AutoModelForCausalLM

    raw = shrink(name, tmp_path)
    job, shipped = validate(raw), config.resolve(name, []).job
    for same in ("method", "strategy"):
        assert getattr(job, same) == getattr(shipped, same)
    assert job.peft == shipped.peft and job.data.format == shipped.data.format and job.objective == shipped.objective
    assert (job.model.quantization, job.model.meta_init) == (shipped.model.quantization, shipped.model.meta_init)

    assert train(tmp_path / "job", raw) == 0
    final = layout.newest_complete(tmp_path / "job")
    assert final is not None and final.name == "step-000002"
    checkpoint = layout.Checkpoint.at(final)
    if job.peft is None:
        AutoModelForCausalLM.from_pretrained(final)
    else:
        from peft import PeftModel

        assert checkpoint.is_lora
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(checkpoint.base), final)
