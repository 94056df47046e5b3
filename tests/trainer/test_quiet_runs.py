"""What every run printed and nobody asked for: peft's fan_in_fan_out warning for GPT-2's
Conv1D, transformers' `loss_type=None` warning."""

from __future__ import annotations

import logging
import warnings

from ftcore.schema import validate
from fttools.tiny import tiny_job
from trainer_helpers import tiny_family


def test_gpt2_lora_sets_fan_in_fan_out_and_warns_nothing(caplog):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.lora import add_lora

    settings = dict(tiny_family("gpt2"))
    model_type = settings.pop("model_type")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))
    job = validate(tiny_job(model={"config": tiny_family("gpt2")}, peft={"target_modules": None}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = add_lora(lm, job)
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    assert adapted.peft_config["default"].fan_in_fan_out is True


def test_a_built_gpt2_names_its_loss_and_transformers_says_nothing(tmp_path, caplog):
    from trainer.dist import DistEnv
    from trainer.model import build
    from fttools.tiny import tiny_tokenizer
    import torch

    job = validate(tiny_job(model={"config": tiny_family("gpt2")}, peft={"target_modules": None}))
    built = build(job, DistEnv(), torch.device("cpu"), tiny_tokenizer())
    lm = built.lm.get_base_model()
    assert lm.loss_type == "ForCausalLM"
    with caplog.at_level(logging.WARNING):
        _ = lm.loss_function
    assert "loss_type=None" not in caplog.text
