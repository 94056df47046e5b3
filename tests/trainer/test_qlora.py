"""QLoRA: a frozen NF4 base (torchao), replicated or sharded with FSDP2 over 2 gloo processes.

The 405B factory's path at toy size: the base is read from safetensors files on the meta
device, each projection quantized whole and split into shards. Its losses must follow the
one-process quantized run, a resumed run must continue exactly, and the adapter must load
with PeftModel over the *unquantized* base (what a user serves).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from safetensors.torch import load_file
from trainer_helpers import (NF4_LLAMA, describe, launch, require_torchao, save_tiny_model, tiny_job, train,
                             train_losses, write_config)

require_torchao()

from ftcore import layout

pytestmark = pytest.mark.train


def qlora_job(base, steps: int, **sections) -> dict:
    raw = tiny_job(
        {"model": {"init": "pretrained", "path": str(base), "config": {}, "quantization": "nf4"},
         "data": {"global_batch_size": 8, "micro_batch_size": 2, "val_fraction": 0},
         "trainer": {"max_steps": steps, "limit_val_batches": 0},
         "optim": {"lr": 3e-3, "lr_scheduler": {"name": "constant", "warmup_steps": 0}},
         "checkpoint": {"every_steps": 2}},
        **sections)
    raw["model"]["config"] = {}  # the base's own config.json
    return raw


def adapter(run_dir, step: int) -> dict:
    return load_file(layout.step_dir(run_dir / "checkpoints", step) / "adapter_model.safetensors")


def test_sharded_nf4_base_trains_like_one_process_resumes_exactly_and_loads_over_the_plain_base(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path / "base", config=NF4_LLAMA)
    assert train(tmp_path / "one", qlora_job(base, 4)) == 0
    one = train_losses(tmp_path / "one")

    # Resume: 2 steps, then the same folder to 4: the same numbers as 4 in one go.
    assert train(tmp_path / "resumed", qlora_job(base, 2)) == 0
    assert train(tmp_path / "resumed", qlora_job(base, 4)) == 0
    assert train_losses(tmp_path / "resumed") == one
    for name, tensor in adapter(tmp_path / "one", 4).items():
        assert torch.equal(tensor, adapter(tmp_path / "resumed", 4)[name]), name

    # Two processes, FSDP2, meta-device init from the files; stopped after 2 steps and requeued.
    sharded = {"model": {"meta_init": True}, "trainer": {"devices": 2, "strategy": "fsdp2"}}
    for steps in (2, 4):
        results = launch(write_config(tmp_path / "two", qlora_job(base, steps, **sharded)), nprocs=2)
        assert [r.returncode for r in results] == [0, 0], describe(results)
    assert "resumed from" in results[0].stdout and "NF4" in results[0].stdout
    # Each rank read its own rows only: about half of the weights (the embeddings' and head's
    # rows, the norms' and the adapters' included), not the whole of every projection.
    share = float(results[0].stdout.split("% of the model's weights")[0].rsplit(", ", 1)[1])
    assert 45 < share < 55, results[0].stdout
    two = train_losses(tmp_path / "two")
    assert two.keys() == one.keys() and two == pytest.approx(one, rel=1e-4)
    assert two[4] < two[1]  # it learns
    ours, theirs = adapter(tmp_path / "two", 4), adapter(tmp_path / "one", 4)
    assert ours.keys() == theirs.keys() and all("lora_" in k for k in ours)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-3, msg=name)

    # A plain PEFT adapter: it loads over the unquantized base, and changes its output.
    final = layout.step_dir(tmp_path / "two" / "checkpoints", 4)
    plain = AutoModelForCausalLM.from_pretrained(base)
    ids = torch.arange(1, 17).unsqueeze(0)
    before = plain(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final)
    assert not any("nf4" in type(p).__name__.lower() for p in tuned.parameters())
    assert not torch.allclose(tuned(input_ids=ids).logits, before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_quantizing_each_ranks_rows_gives_the_shards_of_the_whole_weight(dtype, world, monkeypatch):
    """The trainer's `fill_shard` on every rank, each reading its own rows only, leaves each
    rank's NF4 shard bit for bit the rows torch.chunk gives of the whole weight quantized at once.

    The ranks are threads, and `torch.distributed.all_gather` a stand-in for gloo's: every rank
    hands in a tensor of one shape and gets every rank's back, in rank order, once all have
    arrived (a barrier). The sharded parameter is what fill_shard reads of FSDP2's DTensor:
    the global shape, and the local NF4 shard as `_local_tensor`."""
    import threading
    from types import SimpleNamespace

    import torch

    from ftcore import policy
    from trainer import quantize

    nf4 = quantize._nf4()
    torch.manual_seed(0)
    weight = torch.randn(96 * world, 512, dtype=getattr(torch, dtype)) * torch.rand(96 * world, 1) * 0.1
    whole = nf4.to_nf4(weight, 64, 256)
    arrived = threading.Barrier(world)
    handed: dict[int, torch.Tensor] = {}

    def all_gather(outputs, tensor, group=None):
        rank = int(threading.current_thread().name)
        assert len(outputs) == world and all(o.shape == tensor.shape and o.dtype == tensor.dtype for o in outputs)
        handed[rank] = tensor.clone()
        arrived.wait(timeout=30)
        for source, output in enumerate(outputs):
            output.copy_(handed[source])
        arrived.wait(timeout=30)  # nobody hands in the next weight before all have read this one

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    reads: dict[int, tuple[int, int]] = {}
    shards: dict[int, object] = {}
    failures: list[BaseException] = []

    def rank_fills(rank: int) -> None:
        try:
            start, stop = policy.shard_span(weight.shape[0], world, rank)
            local = nf4.to_nf4(torch.zeros(stop - start, weight.shape[1], dtype=weight.dtype), 64, 256)
            param = SimpleNamespace(_local_tensor=local, shape=weight.shape)

            def read_rows(a, b):
                reads[rank] = (a, b)
                return weight[a:b]

            assert quantize.fill_shard(param, read_rows, rank, world) == stop - start
            shards[rank] = local
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            failures.append(err)
            arrived.abort()

    threads = [threading.Thread(target=rank_fills, args=(r,), name=str(r)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert reads == {r: policy.shard_span(weight.shape[0], world, r) for r in range(world)}  # its own rows only
    for rank in range(world):
        ours, theirs = shards[rank], torch.chunk(whole, world, dim=0)[rank]
        for name in theirs.__tensor_flatten__()[0]:
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), (rank, name)
        assert torch.equal(ours.get_original_weight(), theirs.get_original_weight())
