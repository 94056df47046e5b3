"""The model a recipe names is the model it trains: no inherited random init or another family's
config over a named checkpoint, and a child recipe can drop what it inherits (`key: null`)."""

from __future__ import annotations

import json

import pytest

from launcher import config
from ftcore.errors import UserError

# A Qwen3-MoE checkpoint's config.json (the tiny family the trainer tests build): the plan reads
# only this file.
QWEN3_MOE = {"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 384,
             "max_position_embeddings": 512, "num_experts": 4, "num_experts_per_tok": 2,
             "moe_intermediate_size": 32, "tie_word_embeddings": False}


@pytest.fixture
def moe_folder(tmp_path):
    folder = tmp_path / "tiny-qwen3-moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN3_MOE))
    return folder


def child(tmp_path, text: str):
    path = tmp_path / "child.yaml"
    path.write_text("extends: tiny\n" + text)
    return path


def test_a_path_under_an_inherited_random_init_is_refused_with_the_way_out(ft, tmp_path, moe_folder):
    recipe = child(tmp_path, "model:\n  path: ./tiny-qwen3-moe\n")
    result = ft("plan", "--factory", str(recipe))
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert "model.init=random" in result.stderr and "set model.init=pretrained" in result.stderr
    assert "model.config=null" in result.stderr


def test_another_familys_inherited_config_over_the_checkpoint_is_refused(ft, tmp_path, moe_folder):
    recipe = child(tmp_path, "model:\n  init: pretrained\n  path: ./tiny-qwen3-moe\n")
    result = ft("plan", "--factory", str(recipe))
    assert result.returncode == 2, result.stdout
    assert "model_type=llama but" in result.stderr and "qwen3_moe checkpoint" in result.stderr
    submitted = ft("submit", "--dry-run", "--factory", str(recipe))
    assert submitted.returncode == 2 and "qwen3_moe checkpoint" in submitted.stderr


def test_a_child_recipe_drops_the_inherited_config_with_null(ft, tmp_path, moe_folder):
    recipe = child(tmp_path, "model:\n  init: pretrained\n  path: ./tiny-qwen3-moe\n  config: null\n")
    result = ft("plan", "--factory", str(recipe))
    assert result.returncode == 0, result.stderr
    # 2 layers × (attention + 4 experts + router) + embeddings + head: the MoE's count, not tiny's 0.1 M Llama
    assert "0.124M params (tiny-qwen3-moe/config.json)" in result.stdout
    # the same from the command line, over the parent recipe itself
    direct = ft("plan", "--factory", "tiny", "model.init=pretrained", f"model.path={moe_folder}", "model.config=null")
    assert direct.returncode == 0 and "0.124M params" in direct.stdout


def test_model_config_changes_only_the_keys_it_names(moe_folder):
    job = config.resolve("tiny", ["model.init=pretrained", f"model.path={moe_folder}", "model.config=null",
                                  "model.config.num_hidden_layers=1"]).job
    from launcher import modelconfig

    found = modelconfig.find(job)
    assert found.config == {**QWEN3_MOE, "num_hidden_layers": 1}
    same_family = config.resolve("tiny", ["model.init=pretrained", f"model.path={moe_folder}", "model.config=null",
                                          "model.config.model_type=qwen3_moe"]).job
    assert modelconfig.find(same_family).config["model_type"] == "qwen3_moe"


def test_null_unsets_only_what_cannot_be_null():
    assert config.resolve("tiny", ["model.config=null", "model.init=pretrained", "model.path=org/m"]).job.model.config == {}
    default = config.Job.model_fields["data"].annotation.model_fields["max_seq_length"].default
    assert config.resolve("tiny", ["data.max_seq_length=null"]).job.data.max_seq_length == default != 128
    assert config.resolve("tiny", ["peft=null"]).job.peft is None  # null still means full SFT here
    extra = config.resolve("tiny", ["slurm.extra.exclusive=null"]).job.slurm.extra
    assert extra == {"exclusive": None}  # inside a free mapping a null is a value
    with pytest.raises(UserError, match="model.init=random needs model.config"):
        config.resolve("tiny", ["model.config=null"])
