"""Every model family ft claims trains the model's own function: a tiny random model of each.

For each family the installed transformers has (built from its own config class, fp32):

* ft's training forward, in every layout ft picks (its default path, padded rows, packed rows
  where packing is allowed), gives the logits and the loss of the model's own attention run
  on each example alone;
* LoRA and full SFT trained a few steps through the trainer, reloaded with plain
  `PeftModel` / `AutoModelForCausalLM`, reproduce ft's final validation loss; the merged
  adapter too; the adapter lists the family's default targets (and MoE experts).

The README's model-coverage table is this file's matrix.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
import torch
from trainer_helpers import TINY_FAMILIES, model_examples, read_metrics, tiny_family, tiny_job, train, validate

from ftcore import exits, families, layout
from ftcore.errors import UserError
from trainer.batching import pack
from trainer.collate import collate
from trainer.loss import CausalLMLoss
from trainer.samples import IGNORE_INDEX, Sample

pytestmark = pytest.mark.train

FAMILIES = list(TINY_FAMILIES)


def family_job(model_type: str, **sections) -> dict:
    """A LoRA job on the tiny `model_type` with ft's default targets (the family's)."""
    sections.setdefault("peft", {})
    if sections["peft"] is not None:
        sections["peft"] = {"target_modules": None, **sections["peft"]}
    return tiny_job(model={"config": tiny_family(model_type)}, **sections)


def examples() -> list[Sample]:
    """Examples longer than the tiny configs' 4-token windows, with answers to score."""
    found = model_examples()
    rng = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 384, (13,), generator=rng, dtype=torch.int32)
    found.append(Sample(ids, ids.clone(), (13,)))  # loss on every token
    return found


def own_attention(model_type: str) -> str:
    family = families.get(model_type)
    return family.own


def build(model_type: str, raw: dict):
    from trainer import model as ft_model

    job = validate(raw)
    config = ft_model.model_config(job)
    path, _ = ft_model.attention_path(job, config)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=path.name).eval()
    return lm, path


def per_example_logits(batch: dict, logits: torch.Tensor, samples: list[Sample], padding_free: bool) -> list:
    if padding_free:
        return list(logits[0].split([n for s in samples for n in s.seq_lens]))
    return [piece for row, s in enumerate(samples) for piece in logits[row, : len(s)].split(list(s.seq_lens))]


def reference(lm, model_type: str, samples: list[Sample]) -> tuple[list, torch.Tensor]:
    """The model's own attention on each example alone: logits, and summed answer-token loss."""
    lm.set_attn_implementation(own_attention(model_type))
    logits, loss = [], torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for s in samples:
            for ids, labels in zip(s.input_ids.split(list(s.seq_lens)), s.labels.split(list(s.seq_lens))):
                out = lm(input_ids=ids.long()[None], use_cache=False).logits[0]
                logits.append(out)
                scale = 1.0
                targets = labels.long()[1:]
                keep = targets != IGNORE_INDEX
                if keep.any():
                    loss += torch.nn.functional.cross_entropy(out[:-1][keep].float() * scale, targets[keep],
                                                              reduction="sum").double()
    return logits, loss


def layouts(model_type: str) -> dict[str, dict]:
    """Every layout ft may pick for this family: its default, padded rows, and packing where allowed."""
    found = {"default": {}, "padded": {"data": {"padding_free": False}}}
    packed = {"data": {"packing": True}}
    try:
        validate(family_job(model_type, **packed))
        found["packed"] = packed
    except Exception:
        pass
    return found


@pytest.mark.parametrize("model_type", FAMILIES)
def test_ft_forward_is_the_models_own_function_in_every_layout(model_type):
    samples = examples()
    for name, settings in layouts(model_type).items():
        lm, path = build(model_type, family_job(model_type, **settings))
        rows = pack(samples, max_len=64) if name == "packed" else samples
        want_logits, want_loss = reference(lm, model_type, samples)
        lm.set_attn_implementation(path.name)
        batch = collate(rows, 0, path.name, padding_free=path.padding_free)
        with torch.no_grad():
            loss = CausalLMLoss(lm)(**batch)
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "answer_positions")}
            logits = lm(**inputs, use_cache=False).logits
        got = per_example_logits(batch, logits, rows, path.padding_free)
        assert len(got) == len(want_logits)
        for i, (a, b) in enumerate(zip(got, want_logits)):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"{model_type} {name} ({path.name}) example {i}")
        torch.testing.assert_close(loss.double(), want_loss, atol=1e-4, rtol=1e-5,
                                   msg=f"{model_type} {name} ({path.name}): loss")


@pytest.mark.parametrize("kernel", [families.Kernel("torch_varlen", True, "torch 2.11"),
                                    families.Kernel("torch_varlen", False, "torch 2.12+"),
                                    families.Kernel("sdpa_per_example", True, "fp32 on a GPU")],
                         ids=lambda k: f"{k.name}{'-repeated' if k.repeat_kv else ''}")
@pytest.mark.parametrize("model_type", ["mistral", "qwen3", "gemma3_text", "deepseek_v3"])
def test_the_gpu_kernels_are_the_models_own_function(model_type, kernel, monkeypatch):
    """The kernels a GPU row runs, forced on a CPU (torch's varlen_attn played by its stand-in):
    a sliding window, q/k norms, mixed layer types and MLA's narrower value heads."""
    import varlen_standin

    from trainer import attention

    standin = varlen_standin.varlen_attn_2_11 if kernel.repeat_kv else varlen_standin.varlen_attn_2_12
    monkeypatch.setattr(attention, "_torch_varlen_attn", standin)
    monkeypatch.setattr(attention, "_require_16bit_cuda", lambda name, query: None)
    samples = examples()
    lm, path = build(model_type, family_job(model_type))
    assert path.name == families.VARLEN
    want_logits, want_loss = reference(lm, model_type, samples)
    try:
        lm.set_attn_implementation(attention.register(kernel))
        batch = collate(samples, 0, path.name, padding_free=True)
        with torch.no_grad():
            loss = CausalLMLoss(lm)(**batch)
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "answer_positions")}
            logits = lm(**inputs, use_cache=False).logits
    finally:
        attention.register()
    for i, (a, b) in enumerate(zip(per_example_logits(batch, logits, samples, True), want_logits, strict=True)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"{model_type} {kernel.name} example {i}")
    torch.testing.assert_close(loss.double(), want_loss, atol=1e-4, rtol=1e-5)


def test_the_fast_path_stays_the_default_where_it_is_exact():
    for model_type in FAMILIES:
        path = families.attention_path(validate(family_job(model_type)), None)
        family = families.get(model_type)
        assert path.padding_free == family.varlen, model_type
        assert (path.name == families.VARLEN) == family.varlen


@pytest.mark.parametrize("model_type", ["gemma2", "gpt_oss", "qwen3_next"])
def test_packing_that_would_change_the_function_is_refused_at_validation(model_type):
    with pytest.raises(Exception, match="data.packing=true.*Set data.packing=false"):
        validate(family_job(model_type, data={"packing": True}))


# --- trained through ft, reloaded with plain transformers + peft ------------------------------------

TRAIN = dict(data={"limit_samples": 24, "val_fraction": 0.25, "global_batch_size": 4, "micro_batch_size": 2},
             trainer={"max_steps": 2, "val_every_steps": 2, "log_every_steps": 1},
             optim={"lr": 1e-2, "lr_scheduler": {"name": "constant", "warmup_steps": 0}})


def val_loss_of(model, job) -> float:
    """Mean answer-token loss over the validation set, the model's own forward on each example."""
    from transformers import AutoTokenizer

    from trainer import data

    tokenizer = AutoTokenizer.from_pretrained(str(layout.__file__).rsplit("/ftcore/", 1)[0]
                                              + "/factories/data/tiny_tokenizer")
    val = data.load(job.data, tokenizer, job.trainer.seed).val
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in val:
            out = model(input_ids=s.input_ids.long()[None], labels=s.labels.long()[None], use_cache=False)
            n = int((s.labels[1:] != IGNORE_INDEX).sum())
            total += float(out.loss) * n
            tokens += n
    return total / tokens


# Full SFT on one family per attention path and naming scheme (the forward test above covers
# every family's function; what SFT adds is saving and reloading the whole model), LoRA on all.
SFT_FAMILIES = ("llama", "gemma2", "gpt_oss", "qwen3_next", "stablelm", "gpt2", "deepseek_v3")
RUNS = [(t, "lora") for t in FAMILIES] + [(t, "sft") for t in SFT_FAMILIES]


@pytest.mark.parametrize("model_type,method", RUNS)
def test_trained_through_ft_and_reloaded_with_plain_transformers(model_type, method, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    raw = family_job(model_type, **TRAIN, **({"peft": None} if method == "sft" else {}))
    job = validate(raw)
    assert train(tmp_path, raw) == exits.OK
    final = layout.step_dir(tmp_path / layout.CHECKPOINTS, 2)
    logged = [r["val_loss"] for r in read_metrics(tmp_path) if "val_loss" in r][-1]
    if method == "sft":
        model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
        assert val_loss_of(model, job) == pytest.approx(logged, rel=1e-4)
        return
    adapter = json.loads((final / "adapter_config.json").read_text())
    family = families.get(model_type)
    adapted = {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}
    assert adapted <= set(family.targets) and family.attention[0] in adapted
    from fttools.export import VLLM_EXPERT_LORA, VLLM_NO_LORA, base_architecture, check_adapter

    architecture = base_architecture(adapter["base_model_name_or_path"])
    vllm_problems, _ = check_adapter(final, architecture)
    if family.experts:
        assert {p.rsplit(".", 1)[-1] for p in adapter["target_parameters"]} == set(family.experts)
    if architecture in VLLM_NO_LORA:  # vLLM 0.33 serves no LoRA on it: export refuses (--merge)
        assert any("serves no LoRA adapter" in p for p in vllm_problems)
    elif family.experts and architecture not in VLLM_EXPERT_LORA:
        assert any("target_parameters" in p for p in vllm_problems)  # vLLM never applies it: export refuses
    else:
        assert vllm_problems == []
    base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, final)
    assert val_loss_of(model, job) == pytest.approx(logged, rel=1e-4)
    merged = model.merge_and_unload()
    assert val_loss_of(merged, job) == pytest.approx(logged, rel=1e-4)


def test_match_all_linear_on_gpt2_adapts_its_conv1d_layers():
    from trainer.lora import lora_targets

    lm, _ = build("gpt2", family_job("gpt2"))
    job = validate(family_job("gpt2", peft={"match_all_linear": True}))
    targets = lora_targets(lm, job.peft)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"c_attn", "c_proj", "c_fc"}
    assert "lm_head" not in targets


def test_explicit_targets_leave_the_experts_alone_unless_asked():
    from trainer.lora import expert_targets

    lm, _ = build("mixtral", family_job("mixtral"))
    assert expert_targets(lm, validate(family_job("mixtral", peft={"target_modules": ["q_proj"]})).peft) == []
    asked = validate(family_job("mixtral", peft={"target_modules": ["q_proj"], "experts": True})).peft
    assert len(expert_targets(lm, asked)) == 4  # 2 layers × gate_up_proj, down_proj
    with pytest.raises(Exception, match="peft.dropout.*peft.experts=false"):
        validate(family_job("mixtral", peft={"dropout": 0.1}))
    validate(family_job("mixtral", peft={"dropout": 0.1, "experts": False}))


def test_experts_on_a_peft_without_target_parameters_are_refused_with_the_way_out(monkeypatch):
    """An image with transformers 5 (3-D experts) and a peft older than 0.17: refused, naming
    peft.experts=false; with it the rest is adapted."""
    from ftcore import contract
    from trainer.lora import add_lora

    monkeypatch.setattr(contract, "peft_adapts_parameters", lambda: False)
    lm, _ = build("mixtral", family_job("mixtral"))
    with pytest.raises(UserError, match="cannot adapt.*peft 0.17") as refused:
        add_lora(lm, validate(family_job("mixtral")))
    assert "peft.experts=false" in refused.value.hint
    lm, _ = build("mixtral", family_job("mixtral"))
    adapted = add_lora(lm, validate(family_job("mixtral", peft={"experts": False})))
    assert not adapted.peft_config["default"].target_parameters


def test_a_family_without_its_usual_names_asks_for_targets():
    from ftcore import policy

    job = validate(family_job("gpt2"))
    with pytest.raises(UserError, match="set peft.target_modules"):
        policy.lora_targets(["transformer.h.0.other"], None, job.peft, "gpt2")


def test_the_trainer_entry_says_which_attention_path_and_why(tmp_path):
    """Through `python -m trainer --config`, as a job runs: Gemma 2 trains on its own eager
    attention, padded, and the log's first lines say so once."""
    from trainer_helpers import describe, launch, write_config

    raw = family_job("gemma2", data={"limit_samples": 16}, trainer={"max_steps": 1})
    results = launch(write_config(tmp_path, raw), 1)
    assert results[0].returncode == exits.OK, describe(results)
    out = " ".join(results[0].stdout.split())
    assert out.count("attention: eager, padded rows (Gemma 2: attention-logit soft-capping") == 1, out[:2000]


@pytest.mark.parametrize("model_type", ["qwen3_moe", "deepseek_v3", "qwen3_next"])
def test_layers_peft_reads_as_experts_are_left_out_or_refused(model_type):
    """peft turns `*.gate_proj`/`up_proj`/`down_proj`/`gate` targets of these families into the
    experts' parameters: by default ft leaves those layers out (and peft adapts every layer ft
    asks for); named in peft.target_modules they are refused before anything is built."""
    from trainer.lora import add_lora, lora_targets

    lm, _ = build(model_type, family_job(model_type))
    job = validate(family_job(model_type))
    targets = lora_targets(lm, job.peft)
    assert targets and not [t for t in targets if t.rsplit(".", 1)[-1] in families.PEFT_QWEN2_MOE_NAMES]
    adapted = add_lora(lm, job)
    assert set(targets) <= set(adapted.base_model.targeted_module_names)
    lm, _ = build(model_type, family_job(model_type))
    dense = [n for n, _ in lm.named_modules() if n.endswith(("mlp.gate_proj", "shared_expert.gate_proj",
                                                            "shared_experts.gate_proj"))]
    if dense:
        named = validate(family_job(model_type, peft={"target_modules": ["*.o_proj", "*.gate_proj"]}))
        with pytest.raises(UserError, match="peft reads .* as the experts' names") as refused:
            lora_targets(lm, named.peft)
        assert "leave them out of peft.target_modules" in refused.value.hint
