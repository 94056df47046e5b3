"""`ft submit` refuses what a model's own config.json rules out, and `ft plan` names the attention path."""

from __future__ import annotations

import json


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
