"""`ft submit` refuses what a model's own config.json rules out, `ft plan` names the attention path, and
the families least like Llama run through the command line end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import folder_of
from post_helpers import run_ft
from ftcore import families
from fttools import export
from trainer_helpers import tiny_family


def gemma2_folder(tmp_path, window: int = 16):
    """A model folder whose config.json says Gemma 2 (soft-capping, a 16-token sliding window)."""
    folder = tmp_path / "gemma2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gemma2", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 384,
        "sliding_window": window, "attn_logit_softcapping": 50.0}))
    return folder


def test_packing_across_a_models_sliding_window_is_refused_at_submit(ft, isolated_home, tmp_path):
    folder = gemma2_folder(tmp_path)
    args = ["submit", "--factory", "llama32_1b_squad", f"model.path={folder}", "data.max_seq_length=64", "--dry-run"]
    refused = ft(*args, "data.packing=true")
    text = " ".join(refused.stderr.split())
    assert refused.returncode == 2, refused.stderr
    assert "data.packing=true: the model's sliding window (16 tokens) is shorter than a packed row" in text
    assert "Set data.packing=false" in text and "Traceback" not in refused.stderr
    assert ft(*args).returncode == 0


def test_plan_names_the_attention_path_and_why(ft, isolated_home, tmp_path):
    folder = gemma2_folder(tmp_path)
    gemma = ft("plan", "--factory", "llama32_1b_squad", f"model.path={folder}", "--json")
    assert gemma.returncode == 0, gemma.stderr
    path = json.loads(gemma.stdout)["attention"]
    assert path["name"] == "eager" and not path["padding_free"] and "soft-capping" in path["reason"]
    llama = ft("plan", "--factory", "llama32_1b_squad")
    assert "attention: ft_varlen, padding-free rows (exact for Llama)" in " ".join(llama.stdout.split())


# Families whose paths differ most from Llama's: attention sinks with eager attention and 3-D
# experts (gpt-oss), low-rank attention with a dense first layer (DeepSeek-V3), GPT-2's Conv1D
# layers under other names, linear-attention layers on padded rows (Qwen3-Next).
FAMILIES_END_TO_END = ["gpt_oss", "deepseek_v3", "gpt2", "qwen3_next"]


@pytest.mark.train
@pytest.mark.parametrize("model_type", FAMILIES_END_TO_END)
def test_a_family_runs_through_the_command_line_as_a_user_runs_it(model_type, ft, isolated_home, tmp_path):
    """A user's factory extending `tiny` with another family's config: `ft submit --executor local`
    trains LoRA to COMPLETED, `ft generate` answers from the checkpoint, and `ft export --to vllm`
    writes what vLLM loads: the adapter, or, where vLLM would not serve it, a refusal naming --merge
    and then the merged model."""
    factory = tmp_path / f"{model_type}.yaml"
    factory.write_text(yaml.safe_dump({"extends": "tiny", "model": {"config": tiny_family(model_type)},
                                       "peft": {"method": "lora"}, "trainer": {"max_steps": 2}}))
    done = ft("submit", "--factory", str(factory), "--executor", "local", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = folder_of(done.stderr)
    # The commands that load the model run in this process (torch imported once), as `ft` itself.
    assert "COMPLETED" in run_ft("status", str(folder))[1]
    code, answer, err = run_ft("generate", str(folder), "--question", "Where does Ada live?", "--context", "Ada lives in Oslo.")
    assert code == 0 and answer.strip(), err[-3000:]
    out = tmp_path / "served"
    code, _, err = run_ft("export", str(folder), "--to", "vllm", "--out", str(out))
    # What vLLM 0.33's own loader serves as an adapter (fttools.export's rules, held to vLLM's
    # Python in tests/fttools/test_vllm_rules.py): no LoRA on GPT-2; expert adapters on gpt-oss.
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    refused = architecture in export.VLLM_NO_LORA or (
        bool(families.get(model_type).experts) and architecture not in export.VLLM_EXPERT_LORA)
    if refused:
        assert code == 2 and "--merge" in err and "Traceback" not in err, err
        assert not out.exists()
        code, _, err = run_ft("export", str(folder), "--to", "vllm", "--merge", "--out", str(out))
        assert code == 0, err[-3000:]
        assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    else:
        assert code == 0, err[-3000:]
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert adapter["peft_type"] == "LORA" and adapter["target_modules"]
