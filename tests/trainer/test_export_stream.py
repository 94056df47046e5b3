"""Full SFT's export under FSDP2 streams: each tensor is gathered alone and cast as it
arrives (`checkpointing.full_weights_in`), never the fp32 state whole beside its cast copy.

Two gloo ranks shard a tiny Llama (activation checkpointing on, so wrapper names must go);
rank 0 compares the streamed bf16 weights with the old way (gather everything with
get_model_state_dict, then cast) bit for bit, and counts how many gathered tensors were
alive at once.
"""

from __future__ import annotations

import json
import os
import weakref

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import free_port, tiny_job, tiny_tokenizer, validate

pytestmark = pytest.mark.train


def _rank(rank: int, world: int, out: str, port: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    from trainer import checkpointing, dist
    from trainer.model import build

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    job = validate(tiny_job(peft=None, model={"activation_checkpointing": True}, trainer={"devices": world}))
    env = dist.detect()
    dist.init(env, torch.device("cpu"))
    try:
        built = build(job, env, torch.device("cpu"), tiny_tokenizer())
        assert built.sharded
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        gathered = get_model_state_dict(built.module, options=options)
        before = {k.removeprefix("lm."): v.to(torch.bfloat16) for k, v in gathered.items()}  # the old way
        del gathered

        alive = {"now": 0, "peak": 0, "made": 0}
        full_tensor = DTensor.full_tensor

        def counted(self, *args, **kwargs):
            tensor = full_tensor(self, *args, **kwargs)
            alive["now"] += 1
            alive["made"] += 1
            alive["peak"] = max(alive["peak"], alive["now"])
            weakref.finalize(tensor, lambda: alive.update(now=alive["now"] - 1))
            return tensor

        DTensor.full_tensor = counted
        try:
            after = checkpointing.full_weights_in(built, torch.bfloat16, env.is_main)
        finally:
            DTensor.full_tensor = full_tensor
        if env.is_main:
            result = {"keys_equal": list(after) == list(before),
                      "identical": all(torch.equal(after[k], before[k]) and after[k].dtype == torch.bfloat16
                                       for k in before),
                      "names": sorted(after), **alive}
            with open(out, "w") as f:
                json.dump(result, f)
        else:
            assert after == {}
    finally:
        dist.shutdown()


def test_full_sft_export_gathers_one_tensor_at_a_time_bit_identical(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.json"
    mp.spawn(_rank, args=(2, str(out), free_port()), nprocs=2)
    result = json.loads(out.read_text())
    assert result["keys_equal"] and result["identical"], result
    assert not any("_checkpoint_wrapped_module" in n for n in result["names"])
    assert result["made"] >= 2 * 9  # every weight of both layers was gathered...
    assert result["peak"] == 1  # ...and never two at once: the extra memory is one tensor
