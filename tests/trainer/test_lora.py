"""trainer.lora: which linear layers the target globs adapt."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
from trainer_helpers import tiny_llama

from ftcore.errors import UserError
from trainer.lora import lora_targets


def lora_cfg(**kw):
    from ftcore.schema import LoraConfig

    return LoraConfig(**kw)


def test_lora_globs_match_full_names_and_last_components():
    model = tiny_llama()
    assert len(lora_targets(model, lora_cfg(target_modules=["*_proj"]))) == 14  # 7 per layer × 2
    # NeMo AutoModel's spelling of the same (source document 003): on the real module names too.
    assert lora_targets(model, lora_cfg(target_modules="*.proj")) == lora_targets(model, lora_cfg())
    assert lora_targets(model, lora_cfg(target_modules="q_proj")) == [
        "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert len(lora_targets(model, lora_cfg(target_modules=["model.layers.1.*"]))) == 7
    assert len(lora_targets(model, lora_cfg(target_modules=["*.self_attn.*"]))) == 8
    assert "lm_head" in lora_targets(model, lora_cfg(target_modules=["*_proj", "lm_head"]))
    every = lora_targets(model, lora_cfg(match_all_linear=True, target_modules=["nothing"]))
    assert len(every) == 14 and "lm_head" not in every
    kept = lora_targets(model, lora_cfg(target_modules=["*_proj"], exclude_modules=["down_proj", "model.layers.0.*"]))
    assert len(kept) == 6 and all(".layers.1." in n and "down_proj" not in n for n in kept)


def test_a_glob_matching_nothing_names_the_real_modules():
    with pytest.raises(UserError) as e:
        lora_targets(tiny_llama(), lora_cfg(target_modules=["*_proj", "*.qkv_proj"]))
    message = str(e.value)
    assert "['*.qkv_proj']" in message and "q_proj" in message and "gate_proj" in message
