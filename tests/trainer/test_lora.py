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


def test_adapters_compute_in_the_compute_dtype_keeping_fp32_weights_and_gradients():
    """peft's default on a bf16 base with fp32 adapters copies every adapted layer's input to fp32
    and keeps it for backward; the policy's adapters compute in bf16 (as FSDP2's mixed precision
    does) and still hand fp32 gradients to their fp32 weights. Fewer bytes are kept for backward."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.lora import compute_adapters_in_compute_dtype

    def adapted(policy: bool):
        lm = get_peft_model(tiny_llama().to(torch.bfloat16), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        for p in lm.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if policy:
            assert compute_adapters_in_compute_dtype(lm) == 8  # A and B of 2 layers × 2 decoder layers
        return lm

    ids = torch.randint(0, 300, (2, 32))
    kept, seen = {}, {}
    for policy in (False, True):
        lm = adapted(policy)
        inputs = []
        for name, module in lm.named_modules():
            if name.endswith("lora_A.default"):
                module.register_forward_hook(lambda m, args, out: inputs.append((args[0].dtype, out.dtype)))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            loss = lm(input_ids=ids, labels=ids).loss
        loss.backward()
        kept[policy], seen[policy] = sum(saved), set(inputs)
        assert {p.grad.dtype for p in lm.parameters() if p.requires_grad} == {torch.float32}
    assert seen == {False: {(torch.float32, torch.float32)}, True: {(torch.bfloat16, torch.bfloat16)}}
    assert kept[True] < kept[False]


# --- DoRA: peft.method=dora ------------------------------------------------------------------------


def test_dora_trains_and_its_checkpoint_reloads_with_peft(tmp_path):
    import json

    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from trainer_helpers import tiny_job, train

    from ftcore import exits, layout

    assert train(tmp_path, tiny_job(peft={"method": "dora"}, trainer={"max_steps": 3})) == exits.OK
    final = layout.step_dir(tmp_path / layout.CHECKPOINTS, 3)
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    saved = load_file(final / "adapter_model.safetensors")
    magnitudes = {k: v for k, v in saved.items() if "lora_magnitude_vector" in k}
    assert magnitudes and len(magnitudes) == sum(1 for k in saved if "lora_A" in k)

    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        plain = base(ids).logits
        model = PeftModel.from_pretrained(base, final).eval()
        adapted = model(ids).logits
    loaded = get_peft_model_state_dict(model)  # the adapter as peft saves it, from the loaded model
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], v) for k, v in magnitudes.items())
    assert not torch.allclose(adapted, plain)  # three steps moved the adapted model off its base

    from fttools.export import check_adapter

    problems, _ = check_adapter(final)  # vLLM serves LoRA only: `ft export` refuses it (--merge folds it in)
    assert any("DoRA" in p for p in problems)


def test_dora_is_refused_with_nf4_and_for_experts_with_reasons():
    from pydantic import ValidationError
    from trainer_helpers import tiny_job, validate

    with pytest.raises(ValidationError, match="peft.method=dora with model.quantization=nf4: DoRA takes the norm"):
        validate(tiny_job(peft={"method": "dora"}, model={"quantization": "nf4"}))
    with pytest.raises(ValidationError, match="peft's DoRA adapts linear layers only"):
        validate(tiny_job(peft={"method": "dora", "experts": True}))


def test_the_plan_prices_doras_magnitudes_as_peft_creates_them():
    """`ft plan`'s trainable count for a DoRA job is what peft makes trainable on the same model."""
    from peft import LoraConfig, get_peft_model
    from trainer_helpers import TINY_LLAMA, tiny_job, tiny_llama, validate

    from launcher import plan

    job = validate(tiny_job(peft={"method": "dora", "target_modules": ["*_proj"]}))
    estimate = plan.estimate(job)
    model = get_peft_model(tiny_llama(), LoraConfig(r=job.peft.dim, lora_alpha=job.peft.alpha, use_dora=True,
                                                    target_modules=list(estimate.decision.lora_targets)))
    assert estimate.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = plan.estimate(validate(tiny_job(peft={"target_modules": ["*_proj"]})))
    assert "DoRA adapters" in " ".join(estimate.decision.describe())
    assert estimate.trainable - lora.trainable == TINY_LLAMA["num_hidden_layers"] * (
        3 * TINY_LLAMA["hidden_size"] + 2 * 32 + TINY_LLAMA["intermediate_size"] * 2)
