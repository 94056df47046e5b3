"""trainer.meta_init and trainer.weights: meta-device init gives the model the regular path gives."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from safetensors.torch import load_file
from trainer_helpers import assert_same_tensors, tiny_job, train, train_losses

from ftcore import exits, layout

pytestmark = pytest.mark.train


@pytest.mark.parametrize("method", ["lora", "sft"])
def test_meta_init_gives_the_same_model_as_regular_init(tmp_path, method):
    peft = None if method == "sft" else {}
    runs = {}
    for meta in (False, True):
        job = tmp_path / f"meta{meta}"
        raw = tiny_job(peft=peft, model={"meta_init": meta}, trainer={"max_steps": 2, "strategy": "fsdp2"})
        assert train(job, raw) == exits.OK
        weights = "model.safetensors" if method == "sft" else "adapter_model.safetensors"
        runs[meta] = (train_losses(job), load_file(layout.step_dir(job / layout.CHECKPOINTS, 2) / weights))
    assert runs[False][0] == runs[True][0]
    assert_same_tensors(runs[False][1], runs[True][1])


def test_meta_init_reads_a_sharded_pretrained_folder(tmp_path):
    """Rows come straight from the safetensors files, for full SFT and under fresh LoRA adapters
    (peft's own, drawn over a memory-free skeleton: the same adapters as the regular path)."""
    from trainer_helpers import save_tiny_model

    base = save_tiny_model(tmp_path / "base")
    pretrained = {"init": "pretrained", "path": str(base), "config": {}}
    losses = {}
    for method, peft in (("sft", None), ("lora", {})):
        for meta in (False, True):
            job = tmp_path / f"{method}-{meta}"
            raw = tiny_job(model={**pretrained, "meta_init": meta}, peft=peft, trainer={"max_steps": 2, "strategy": "fsdp2"})
            assert train(job, raw) == exits.OK
            losses[method, meta] = train_losses(job)
    assert losses["sft", False] == losses["sft", True]
    # LoRA starts from B = 0, so the first step sees the pretrained model alone whatever A is.
    assert losses["lora", False][1] == losses["lora", True][1] == losses["sft", True][1]
    # ... and A is the same draw on both paths, so every later step agrees too.
    assert losses["lora", False] == losses["lora", True]
