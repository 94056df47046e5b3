"""`ft plan`'s shapes against the models transformers builds, family by family.

Each family's tiny random model is built with transformers' own config class
(`AutoModelForCausalLM.from_config`), its config.json saved to a folder, and that folder
planned as `model.path`: parameter tensors (names and sizes), adaptable module names and LoRA
sizes (against peft on the built model) must be the model's. The full-size defaults are
checked on the meta device (no memory), so a config.json that leaves keys out is priced with
the family's own defaults.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from trainer_helpers import tiny_job, validate

from ftcore import arch
from launcher import plan

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 384}
# Per family: what makes its tiny model exercise every branch of its shapes (MoE and dense
# layers, linear and full attention, MLA's low-rank q, biases, q/k norms, fused projections).
EXTRA = {
    "qwen3": {"head_dim": 16},
    "qwen3_moe": {"moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 2},
    "mixtral": {"num_local_experts": 4},
    "gemma": {"head_dim": 16}, "gemma2": {"head_dim": 16}, "gemma3_text": {"head_dim": 16},
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "phi": {"qk_layernorm": True},
    "olmo2": {"attention_bias": True},
    "granite": {"attention_bias": True, "mlp_bias": True},
    "cohere": {"use_qk_norm": True},
    "smollm3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "stablelm": {"qk_layernorm": True, "use_qkv_bias": True},
    "gpt2": {"n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 128},
    "falcon": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "gpt_oss": {"num_local_experts": 4, "head_dim": 16},
    "deepseek_v3": {"first_k_dense_replace": 1, "n_routed_experts": 4, "moe_intermediate_size": 32, "q_lora_rank": 32,
                    "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "n_group": 1,
                    "topk_group": 1, "num_experts_per_tok": 2},
    "qwen3_next": {"num_experts": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
                   "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
                   "linear_value_head_dim": 16, "head_dim": 16, "num_experts_per_tok": 2,
                   "layer_types": ["linear_attention", "full_attention", "linear_attention"]},
}
FAMILIES = sorted(arch.SHAPES)


def test_every_family_of_the_installed_transformers_is_known():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert set(FAMILIES) <= set(CONFIG_MAPPING_NAMES), set(FAMILIES) - set(CONFIG_MAPPING_NAMES)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(model_type, the tiny model, the folder holding its config.json)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = request.param
    config = AutoConfig.for_model(model_type, **{**TINY, **EXTRA.get(model_type, {})})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path_factory.mktemp(model_type)
    config.save_pretrained(folder)
    return model_type, model, folder


def planned_job(folder, **sections):
    """A job whose model.path is `folder` (its config.json only: the plan reads nothing else)."""
    raw = tiny_job(**sections)
    raw["model"] = {"init": "pretrained", "path": str(folder)}
    return validate(raw)


def linear_modules(model) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def test_the_plan_has_the_models_tensors_and_layer_names(family):
    model_type, model, folder = family
    job = planned_job(folder, peft=None)
    est = plan.estimate(job)
    dims = est.dims
    assert dims.exact and dims.model_type == model_type and dims.source == str(folder / "config.json")
    assert est.params == sum(p.numel() for p in model.parameters())
    assert {t.name: t.numel for t in dims.tensors()} == {n: p.numel() for n, p in model.named_parameters()}
    assert dims.linear_names() == linear_modules(model)
    assert [(e.name, e.experts) for e in dims.experts()] == [
        (n, p.shape[0]) for n, p in model.named_parameters() if p.dim() == 3 and "experts" in n]


# peft (0.21) rewrites targets for the MoE families transformers 5 converts from v4 checkpoints: a
# target named `*.gate_proj`/`*.up_proj`/`*.down_proj`/`*.gate` becomes the experts' 3-D parameter.
# ft leaves those layers out (`Family.peft_unreachable`, ftcore.families), so these counts hold there too.


def test_lora_counts_equal_peft_on_the_built_model(family):
    """Every adaptable layer (match_all_linear) and every 3-D expert weight (target_parameters)."""
    from peft import LoraConfig, get_peft_model

    model_type, model, folder = family
    job = planned_job(folder, peft={"dim": 4, "match_all_linear": True})
    est = plan.estimate(job)
    experts = list(est.decision.lora_parameters or [])
    assert experts == [e.name for e in est.dims.experts()]  # every linear layer: the experts too
    adapted = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, target_modules=list(est.decision.lora_targets), target_parameters=experts or None))
    assert est.trainable == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def test_the_default_lora_is_priced_as_the_trainer_adapts_it(family):
    """Unset peft.target_modules: the family's projections and its experts (ftcore.families), as
    the trainer's add_lora builds them on the real model, counted exactly by the plan."""
    from trainer.lora import add_lora

    model_type, model, folder = family
    job = planned_job(folder, peft={"dim": 4, "target_modules": None})
    est = plan.estimate(job)
    adapted = add_lora(copy.deepcopy(model), job)
    assert est.trainable == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert bool(est.decision.lora_parameters) == bool(est.dims.experts())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_config_json_that_leaves_keys_out_gets_the_familys_defaults(model_type):
    """A hub config.json lists only some keys: the rest are the config class's defaults. The
    full-size default model is built on the meta device (no memory) and counted."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type))
    assert arch.dims_from_config({"model_type": model_type}, "defaults").params == sum(
        p.numel() for p in model.parameters())


def test_activations_follow_the_family():
    """Per-token activations come from each family's own layers: a gated MLP keeps more than a
    plain one of the same width, experts count per routed token, checkpointing keeps less."""
    llama = arch.dims_from_config({"model_type": "llama", **TINY}, "")
    neox = arch.dims_from_config({"model_type": "gpt_neox", **TINY}, "")
    mixtral = arch.dims_from_config({"model_type": "mixtral", **TINY, "num_experts_per_tok": 2}, "")
    assert neox.activations_per_token(False) < llama.activations_per_token(False) < mixtral.activations_per_token(False)
    assert llama.activations_per_token(True) < llama.activations_per_token(False)
    unknown = arch.dims_from_config({"model_type": "brand_new", **TINY}, "config.json")
    assert not unknown.exact and not unknown.named and "priced as a Llama-shaped decoder" in unknown.source


def test_activations_are_what_autograd_keeps_within_a_factor_of_about_two(family):
    """One forward of the tiny model on 120 tokens: the bytes autograd keeps for backward (each
    storage once, weights and one copy of the logits aside) against the plan's per-token
    elements. Loose by design: the plan prices memory-efficient attention, while eager attention
    (GPT-2, Gemma 2, gpt-oss here) also keeps its (tokens × tokens) probabilities."""
    model_type, model, _ = family
    dims = arch.dims_from_config(model.config.to_dict(), "")
    tokens = 120  # GPT-2's tiny model has 128 positions
    kept: dict[int, int] = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=torch.randint(0, 300, (1, tokens)))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(size for ptr, size in kept.items() if ptr not in weights) - tokens * dims.vocab * 4
    planned = tokens * dims.activations_per_token(checkpointed=False) * 4
    assert 0.4 < measured / planned < 2.5, (model_type, measured / planned)
