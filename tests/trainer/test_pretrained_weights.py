"""A pretrained load trains the checkpoint's own weights, or stops with the names of those it
could not place (transformers would re-initialise or drop them and train on)."""

from __future__ import annotations

import pytest

from ftcore.errors import UserError
from fttools.tiny import save_tiny_model, tiny_job, train


def pretrained(path, **config) -> dict:
    return {"init": "pretrained", "path": str(path), "config": config}


def test_a_config_that_adds_weights_stops_the_trainer_naming_the_missing(tmp_path):
    base = save_tiny_model(tmp_path / "base")  # a Llama without attention biases
    job = tiny_job(peft=None, model=pretrained(base, attention_bias=True))
    with pytest.raises(UserError) as raised:
        train(tmp_path / "run", job)
    text = str(raised.value)
    assert "weight(s) MISSING" in text and "model.layers.0.self_attn.q_proj.bias" in text
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_weights_the_model_has_no_place_for_stop_the_trainer_as_unexpected(tmp_path):
    base = save_tiny_model(tmp_path / "base", config={"attention_bias": True})
    job = tiny_job(peft=None, model=pretrained(base, attention_bias=False))
    with pytest.raises(UserError, match=r"UNEXPECTED.*model\.layers\.0\.self_attn\.k_proj\.bias"):
        train(tmp_path / "run", job)


def test_another_model_type_over_the_checkpoint_stops_the_trainer_too(tmp_path):
    base = save_tiny_model(tmp_path / "base")
    job = tiny_job(model=pretrained(base, model_type="qwen3_moe"))
    with pytest.raises(UserError, match="model.config sets model_type=qwen3_moe but .* is a llama checkpoint"):
        train(tmp_path / "run", job)


def test_the_checkpoints_own_config_loads_and_trains(tmp_path):
    base = save_tiny_model(tmp_path / "base")
    assert train(tmp_path / "run", tiny_job(model=pretrained(base, rms_norm_eps=1e-5), trainer={"max_steps": 1})) == 0
