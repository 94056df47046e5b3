"""`ft plan` against the tensors the trainer actually holds, layout by layout, rank by rank.

Each case trains a tiny model for 2 steps of 2 micro batches on CPU (1 process in this one,
2 over gloo with torch.multiprocessing) and records, with trainer.memory, the peak bytes of
its parameters (local shards; NF4 codes and scales), its gradients (including the unsharded
ones FSDP2 accumulates while it defers the reduce-scatter) and Adam's moments. The plan's
rows for the same job and rank must be those numbers exactly: both come from one decision
(ftcore.policy), the trainer building it and the planner pricing it. The rows the plan marks
as estimates (buffers, activations, logits) are not compared here.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
from trainer_helpers import NF4_LLAMA, free_port, gpu_dtypes_on_cpu, held_run, save_tiny_model, tiny_job, validate, write_config

from launcher import plan

pytestmark = pytest.mark.train

BATCH = {"global_batch_size": 8, "micro_batch_size": 2, "val_fraction": 0}  # 2 micro batches per rank and step
SFT = {"peft": None}
NF4 = {"model": {"config": NF4_LLAMA, "quantization": "nf4"}}
BF16 = {"model": {"dtype": "bf16"}}

CASES = {
    "lora-ddp-1": (1, {}),
    "lora-ddp-2": (2, {}),
    "sft-ddp-1": (1, {**SFT, "trainer": {"strategy": "ddp"}}),
    "sft-fsdp2-2": (2, SFT),  # reduce-scatter after every micro batch: only shards
    # Deferred reduce-scatter: unsharded adapter gradients; r=5 splits 3 + 2 rows over 2 ranks.
    "lora-fsdp2-2": (2, {"trainer": {"strategy": "fsdp2"}, "peft": {"dim": 5}}),
    "qlora-ddp-1": (1, NF4),
    "qlora-fsdp2-2-meta": (2, {**NF4, "trainer": {"strategy": "fsdp2"}}),  # the 405B path, from files
    # The GPU's dtype policy on this CPU (policy.compute_dtype as on a GPU): bf16 frozen base and
    # compute, fp32 adapters (computed in bf16 on both strategies), fp32 master weights and Adam.
    "lora-ddp-1-gpu-dtypes": (1, BF16),
    "lora-fsdp2-2-gpu-dtypes": (2, {**BF16, "trainer": {"strategy": "fsdp2"}}),
    "sft-fsdp2-2-gpu-dtypes": (2, {**SFT, **BF16}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_plan_prices_exactly_what_the_trainer_holds(case, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    from ftcore import policy

    world, preset = CASES[case]
    gpu_dtypes = case.endswith("-gpu-dtypes")
    if gpu_dtypes:
        monkeypatch.setattr(policy, "compute_dtype", gpu_dtypes_on_cpu)
    raw = tiny_job(preset, data=BATCH, trainer={"devices": world, "max_steps": 2, "limit_val_batches": 0})
    if case.endswith("-meta"):
        base = save_tiny_model(tmp_path / "base", config=NF4_LLAMA)
        raw["model"] = {**raw["model"], "init": "pretrained", "path": str(base), "config": {}, "meta_init": True}
    config = str(write_config(tmp_path / "job", raw))
    if world == 1:
        held_run(0, 1, config, 0, gpu_dtypes)
    else:
        mp.spawn(held_run, args=(world, config, free_port(), gpu_dtypes), nprocs=world)

    job = validate(raw)
    for rank in range(world):
        held = json.loads((tmp_path / "job" / f"held-{rank}.json").read_text())
        assert held.pop("exit") == 0
        est = plan.estimate(job, rank=rank)
        priced = {name: est.row(name).bytes for name in held}
        assert priced == held, f"rank {rank}: plan {priced} != trainer {held}"
        assert all(est.row(name).exact for name in held)
    if "qlora" in case:
        assert "NF4" in est.row("weights").how  # the quantized path was taken, not a fallback
    if gpu_dtypes:
        d = est.decision
        assert (d.compute, d.trained, d.optim) == ("bf16", "fp32", "fp32")  # the GPU policy was priced
        assert (d.frozen, d.adapter_compute) == ("bf16", "bf16") if d.lora else d.master_weights
