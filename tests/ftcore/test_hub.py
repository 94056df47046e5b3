"""Which hub repositories a job names, and which of their files ft stages and reads."""

from __future__ import annotations

import pytest

from ftcore import hub
from launcher import config

SQUAD = ["README.md", "plain_text/train-00000-of-00001.parquet", "plain_text/validation-00000-of-00001.parquet"]
ALPACA = [".gitattributes", "README.md", "data/train-00000-of-00001-a09b74b3ef9c3b56.parquet"]


@pytest.mark.parametrize("files, split, expected", [
    (SQUAD, "train", ["plain_text/train-00000-of-00001.parquet"]),
    (SQUAD, "validation", ["plain_text/validation-00000-of-00001.parquet"]),
    (SQUAD, "test", []),
    (ALPACA, "train", ["data/train-00000-of-00001-a09b74b3ef9c3b56.parquet"]),
    (["train.jsonl", "dev.jsonl", "test.jsonl"], "validation", ["dev.jsonl"]),
    (["qa.jsonl", "dataset_infos.json"], "train", ["qa.jsonl"]),  # no split named: all of it is train
    (["qa.jsonl"], "validation", []),
    (["trainer_notes.jsonl", "retrain.jsonl", "val.jsonl"], "train", []),  # "train" must stand alone
    (["data/my_split-0.json"], "my_split", ["data/my_split-0.json"]),
])
def test_split_files_follow_the_hubs_naming(files, split, expected):
    assert hub.split_files(files, split) == expected


def test_the_job_names_its_hub_model_and_dataset_once_each_with_their_roles():
    job = config.resolve("llama32_1b_squad", ["data.val_path=rajpurkar/squad"]).job
    model, data = hub.artefacts(job)
    assert (model.repo_id, model.repo_type, model.weights, model.tokenizer) == ("meta-llama/Llama-3.2-1B", "model", True, True)
    assert (data.repo_id, data.keys, data.splits) == ("rajpurkar/squad", ("data.path", "data.val_path"), ("train", "validation"))
    separate = hub.artefacts(config.resolve("llama32_1b_squad", ["model.tokenizer=org/tok"]).job)
    assert [(a.repo_id, a.weights, a.tokenizer) for a in separate[:2]] == [
        ("meta-llama/Llama-3.2-1B", True, False), ("org/tok", False, True)]


def test_local_paths_shipped_files_and_random_models_name_nothing_on_the_hub(tmp_path):
    assert hub.artefacts(config.resolve("tiny", []).job) == []
    job = config.resolve("llama32_1b_squad", [f"model.path={tmp_path}", f"data.path={tmp_path}/d.jsonl"]).job
    assert hub.artefacts(job) == []


def test_model_patterns_take_safetensors_and_fall_back_to_bin_only_without_them():
    weights = hub.Artefact("o/m", "model", ("model.path",), weights=True, tokenizer=True)
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "original/consolidated.00.pth"]
    assert hub.selected(both, hub.patterns(weights, both)) == ["config.json", "model.safetensors", "tokenizer.json"]
    old = ["config.json", "pytorch_model.bin", "tokenizer.json"]
    assert hub.selected(old, hub.patterns(weights, old)) == old
    tokenizer_only = weights._replace(weights=False)
    assert hub.selected(both, hub.patterns(tokenizer_only, both)) == ["config.json", "tokenizer.json"]
    assert hub.missing_files(weights, ["config.json"]) == [
        "no .safetensors (or pytorch_model*.bin) weights",
        "no tokenizer files (tokenizer.json, tokenizer_config.json, tokenizer.model)"]
