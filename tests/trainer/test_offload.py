"""model.cpu_offload: FSDP2 shards, gradients and the optimizer step in host memory.

On a GPU the gradient norm of offloaded shards all-reduces CPU tensors, which an nccl-only
process group cannot carry: `trainer.dist` creates `cuda:nccl,cpu:gloo`. Here two gloo ranks
train full SFT with the offload policy through the trainer's own loop (the schema refuses
offload on CPU jobs, so the policy's decision is patched in the ranks) and must match the
same job without offload; the CUDA half of the backend is held by its string.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import describe, free_port, launch, read_metrics, tiny_job, write_config

pytestmark = pytest.mark.train


def test_a_gpu_group_carries_cpu_tensors_over_gloo():
    from trainer import dist

    assert dist.backend(torch.device("cuda", 0)) == "cuda:nccl,cpu:gloo"
    assert dist.backend(torch.device("cpu")) == "cpu:gloo"


def _offloaded_rank(rank: int, world: int, config: str, port: int) -> None:
    from ftcore import policy
    from ftcore.schema import load_job
    from trainer.train import run

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    decide = policy.decide
    policy.decide = lambda job: dataclasses.replace(decide(job), cpu_offload=True)
    seen = {}

    def watch(event, built, optimizer):
        seen["offloaded"] = built.decision.cpu_offload  # the patched decision reached the sharding
        seen["backend"] = torch.distributed.get_backend_config()

    code = run(load_job(config), os.path.dirname(config), watch=watch)
    with open(os.path.join(os.path.dirname(config), f"rank-{rank}.json"), "w") as f:
        json.dump({"code": code, **seen}, f)


def test_offloaded_fsdp2_trains_like_resident_shards(tmp_path):
    import torch.multiprocessing as mp

    raw = tiny_job(peft=None, trainer={"devices": 2, "max_steps": 3, "log_every_steps": 1},
                   data={"micro_batch_size": 2})
    plain = write_config(tmp_path / "plain", raw)
    offloaded = write_config(tmp_path / "offloaded", raw)
    results = launch(plain, nprocs=2)
    assert [r.returncode for r in results] == [0, 0], describe(results)
    mp.spawn(_offloaded_rank, args=(2, str(offloaded), free_port()), nprocs=2)
    ranks = [json.loads((tmp_path / "offloaded" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert all(r["code"] == 0 and r["offloaded"] for r in ranks), ranks
    assert ranks[0]["backend"] == "cpu:gloo"
    for key in ("loss", "grad_norm"):
        got = [m[key] for m in read_metrics(tmp_path / "offloaded") if key in m]
        want = [m[key] for m in read_metrics(tmp_path / "plain") if key in m]
        assert len(got) == 3 and got == pytest.approx(want, rel=1e-5), key
