"""The training step as torchtitan writes it: no host sync between sync points, non-finite
steps never reach the weights, one gradient norm, gradients summed (not averaged) under FSDP2,
compile before sharding, and the start-up check against the model's own loss."""

from __future__ import annotations

import math
import traceback

import pytest

pytest.importorskip("torch")
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from trainer_helpers import read_metrics, tiny_job, train, validate

from ftcore import exits, layout
from ftcore.errors import UserError

pytestmark = pytest.mark.train


# --- host syncs ---------------------------------------------------------------------------------

# Ops that make the host wait for the device: reading a value, or an output whose size depends
# on the data (boolean indexing is nonzero underneath).
SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique2"}
# On a CPU the host and the device are one, so the counter cannot tell host data from device
# data by where it lives; it goes by who reads it. The data pipeline reads the samples, which
# live on the host by design (it hands the device finished tensors). The attention fallback
# for CPUs reads the examples' lengths on the host, where that is free; on a GPU a
# variable-length kernel runs instead (trainer.attention).
HOST_DATA = ("trainer/samples.py", "trainer/batching.py", "trainer/collate.py")
ALLOWED = ("_per_example",)


def _device_read(stack) -> bool:
    return not any(frame.name in ALLOWED or frame.filename.endswith(HOST_DATA) for frame in stack)


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        index_by_mask = name == "aten.index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) if i is not None)
        if name in SYNCING or index_by_mask:
            stack = traceback.extract_stack()
            if _device_read(stack):
                where = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in stack[-8:-1]]
                self.syncs.append(f"{name} at " + " <- ".join(reversed(where)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["lora", "sft", "dpo", "dpo_full"])
def test_steps_between_sync_points_never_wait_for_the_device(tmp_path, method, monkeypatch):
    counter = SyncCounter()
    listed = []
    original_tolist = torch.Tensor.tolist

    def tolist(self):  # (not dispatched as an op: counted here)
        if counter in active and _device_read(traceback.extract_stack()):
            listed.append("".join(traceback.format_stack(limit=6)))
        return original_tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    active = []

    def on_step(record):  # steps 2 and 3 run inside the counter; 4 logs
        if record["step"] == 1:
            counter.__enter__()
            active.append(counter)
        elif record["step"] == 3:
            active.clear()
            counter.__exit__(None, None, None)

    # DPO: the reference's forward (adapters off, or the frozen copy) and the pair figures stay on the device too.
    preference = {"objective": {"name": "dpo"}, "data": {"path": "ft:tiny_prefs.jsonl", "format": "preference"}}
    raw = tiny_job(preference if method.startswith("dpo") else {},
                   trainer={"max_steps": 4, "log_every_steps": 4, "grad_clip": None},
                   peft=None if method in ("sft", "dpo_full") else {},
                   # Sync points come every log_every_steps here, not by the clock: a step slowed by a
                   # busy machine would otherwise make one due at steps 2-3 (a stop is checked often).
                   slurm={"signal_seconds": 3600})
    assert train(tmp_path, raw, on_step=on_step) == exits.OK
    assert not counter.syncs, "\n".join(counter.syncs)
    assert not listed, "\n".join(listed)
    logged = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in logged] == [4] and math.isfinite(logged[0]["grad_norm"])


# --- non-finite steps -------------------------------------------------------------------------


def _poison(monkeypatch, at_call: int):
    """The loss of the `at_call`-th micro batch is NaN (so is its gradient)."""
    from trainer.loss import CausalLMLoss

    forward = CausalLMLoss.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        loss = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(CausalLMLoss, "forward", poisoned)


@pytest.mark.parametrize("method", ["lora", "sft"])
def test_a_nan_step_is_skipped_and_never_reaches_the_weights(tmp_path, monkeypatch, method, capsys):
    """Step 2 of 4 gets a NaN loss: skipped on the device; the run equals one that never had step 2's update."""
    from safetensors.torch import load_file

    sections = dict(trainer={"max_steps": 4, "nonfinite": "skip", "log_every_steps": 1}, peft=None if method == "sft" else {},
                    optim={"lr_scheduler": {"name": "constant", "warmup_steps": 0}})
    _poison(monkeypatch, at_call=3)  # micro batch 1 of step 2 (2 micro batches per step)
    assert train(tmp_path, tiny_job(**sections)) == exits.OK
    out = capsys.readouterr().out
    assert "1 step(s) so far had a non-finite loss or gradient (first: step 2) and were skipped" in out
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    final = load_file(layout.step_dir(tmp_path / layout.CHECKPOINTS, 4) / weights)
    assert all(torch.isfinite(t).all() for t in final.values())
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert math.isnan(losses[1]) and all(math.isfinite(x) for i, x in enumerate(losses) if i != 1)


def test_a_nan_step_stops_the_run_by_default(tmp_path, monkeypatch):
    _poison(monkeypatch, at_call=3)
    raw = tiny_job(trainer={"max_steps": 4})
    assert validate(raw).trainer.nonfinite == "stop"
    with pytest.raises(UserError, match="step 2: the loss or gradient is not finite"):
        train(tmp_path, raw)
    assert layout.newest_complete(tmp_path) is None  # nothing saved from the poisoned run


def test_the_guard_leaves_weights_and_optimizer_state_alone():
    from trainer import update

    layer = torch.nn.Linear(3, 2)
    opt = update.optimizer(validate(tiny_job()).optim, list(layer.parameters()))
    guard = update.Guard(torch.device("cpu"), sharded=False)
    layer(torch.randn(4, 3)).sum().backward()
    guard.mark(opt, list(layer.parameters()), 1, None)
    opt.step()
    before = [p.detach().clone() for p in layer.parameters()]
    state = {k: v.clone() for k, v in opt.state[layer.weight].items()}
    layer.weight.grad[0, 0] = float("inf")
    guard.mark(opt, list(layer.parameters()), 2, update.total_norm(list(layer.parameters())))
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    assert all(torch.equal(state[k], opt.state[layer.weight][k]) for k in state)
    assert guard.counts().tolist() == [1.0, 2.0]


# --- gradient norm --------------------------------------------------------------------------------


def test_no_clipping_and_no_norm_when_grad_clip_is_off_and_nothing_is_logged(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append("clip_grad_norm_"))
    original = torch.nn.utils.get_total_norm

    def counted(*args, **kwargs):
        calls.append("norm")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted)
    raw = tiny_job(trainer={"max_steps": 4, "log_every_steps": 2, "grad_clip": None})
    assert train(tmp_path, raw) == exits.OK
    assert calls == ["norm", "norm"]  # steps 2 and 4, for the log; never clip_grad_norm_
    calls.clear()
    assert train(tmp_path / "clipped", tiny_job(trainer={"max_steps": 2, "grad_clip": 1.0})) == exits.OK
    assert calls == ["norm", "norm"]  # one per step, reused for clipping


def test_fsdp2_sums_gradients_instead_of_averaging(tmp_path):
    """The loss is not multiplied by the world size: FSDP2's divide factor is 1."""
    from torch.distributed.fsdp import FSDPModule

    from trainer import dist
    from trainer.model import build
    from trainer.tokenizer import load_tokenizer

    job = validate(tiny_job(peft=None))
    env = dist.DistEnv()
    dist.init(env, torch.device("cpu"), alone_too=True)
    try:
        built = build(job, env, torch.device("cpu"), load_tokenizer(job))
        units = [m for m in built.module.modules() if isinstance(m, FSDPModule)]
        assert len(units) == 3  # two decoder layers and the root
        for unit in units:
            for group in unit._get_fsdp_state()._fsdp_param_groups:
                assert group.gradient_divide_factor == 1.0 and group.force_sum_reduction_for_comms
    finally:
        dist.shutdown()


# --- compile ------------------------------------------------------------------------------------------


@pytest.mark.compile
@pytest.mark.timeout(1200)  # inductor compiles C++ on the CPU: minutes on a busy machine
def test_layers_are_compiled_before_fsdp2_shards_them(tmp_path, monkeypatch):
    from torch.distributed import fsdp

    from trainer import sharding

    seen = []
    original = fsdp.fully_shard

    def recording(module, **kwargs):
        if type(module).__name__.endswith("DecoderLayer"):
            seen.append(module._compiled_call_impl is not None)
        return original(module, **kwargs)

    monkeypatch.setattr(fsdp, "fully_shard", recording)
    from trainer import dist
    from trainer.model import build
    from trainer.tokenizer import load_tokenizer

    job = validate(tiny_job(peft=None, trainer={"compile": True}))
    dist.init(dist.DistEnv(), torch.device("cpu"), alone_too=True)
    try:
        build(job, dist.DistEnv(), torch.device("cpu"), load_tokenizer(job))
    finally:
        dist.shutdown()
    assert seen == [True, True]


# --- the start-up check against the model's own loss ---------------------------------------------


COHERE = {"model_type": "cohere", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 384, "max_position_embeddings": 512,
          "logit_scale": 0.0625}
GRANITE = {"model_type": "granite", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 384, "max_position_embeddings": 512,
           "logits_scaling": 8.0}


@pytest.mark.parametrize("config", [COHERE, GRANITE], ids=["cohere-logit_scale", "granite-logits_scaling"])
def test_output_scaling_is_applied_and_checked_against_the_models_own_loss(tmp_path, config, monkeypatch):
    from trainer import loss

    raw = tiny_job(model={"config": config}, trainer={"max_steps": 1})
    assert train(tmp_path / "ok", raw) == exits.OK  # ft applies the scaling: the check passes

    monkeypatch.setattr(loss, "logit_scale", lambda config: 1.0)  # an architecture ft does not know
    with pytest.raises(UserError, match="differs from the model's own loss"):
        train(tmp_path / "unknown", raw)


@pytest.mark.compile
@pytest.mark.timeout(1200)  # inductor compiles C++ on the CPU: minutes on a busy machine
def test_compiled_layers_stop_recompiling_once_lengths_are_dynamic(tmp_path):
    """Padding-free boundaries are tensors: after the first change of shape the compiled layers
    take any lengths. (A Python list of lengths recompiled for every new micro batch.)"""
    from torch._dynamo.utils import counters

    graphs = {}

    def on_step(record):
        graphs[record["step"]] = counters["stats"]["unique_graphs"]

    raw = tiny_job(trainer={"max_steps": 5, "compile": True, "check_loss": False, "limit_val_batches": 0},
                   data={"micro_batch_size": 2}, peft=None)
    torch._dynamo.reset()
    assert train(tmp_path, raw, on_step=on_step) == exits.OK
    assert graphs[2] > 0 and graphs[5] == graphs[2], graphs  # steps 3–5: six new micro batches, no new graph


def test_the_check_runs_on_one_short_example_that_keeps_answer_tokens():
    from trainer_helpers import sample_of

    from trainer.train import CHECK_TOKENS, check_sample

    long_answer_at_end = sample_of(list(range(1000)), [-100] * 990 + list(range(990, 1000)))
    cut = check_sample(long_answer_at_end)
    assert len(cut) == CHECK_TOKENS and cut.answer_tokens == 10
    answer_first = sample_of(list(range(1000)), list(range(10)) + [-100] * 990)
    assert len(check_sample(answer_first)) == 1000  # cutting would leave no answer: whole
