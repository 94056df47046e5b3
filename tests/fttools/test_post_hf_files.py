"""Intermediate checkpoints keep only the distributed state; ft's after-training commands still
take them, making the Hugging Face files from that state, equal to what training writes."""

from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch")
from post_helpers import PROMPT, one_thread, run_ft, train_job
from safetensors.torch import load_file

from ftcore import layout

pytestmark = pytest.mark.train

HF_FILES = {"lora": "adapter_model.safetensors", "sft": "model.safetensors"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with one_thread():
        home = tmp_path_factory.mktemp("home")
        for method in HF_FILES:
            train_job(home, method, checkpoint={"every_steps": 1}, peft=None if method == "sft" else {})
        yield home


@pytest.mark.parametrize("method", HF_FILES)
def test_only_the_final_checkpoint_has_hugging_face_files(home, method):
    root = home / "jobs" / method / layout.CHECKPOINTS
    first, final = layout.step_dir(root, 1), layout.step_dir(root, 2)
    assert layout.is_complete(first) and layout.kind_of(first) is None
    assert not (first / HF_FILES[method]).exists() and (first / "tokenizer_config.json").is_file()
    assert (final / HF_FILES[method]).is_file()


@pytest.mark.parametrize("method", HF_FILES)
def test_commands_accept_a_distributed_only_checkpoint(home, tmp_path, method):
    """The final checkpoint stripped of its HF files: `ft generate` makes them again, equal."""
    copy = tmp_path / method
    shutil.copytree(home / "jobs" / method, copy)
    final = layout.step_dir(copy / layout.CHECKPOINTS, 2)
    for path in layout.model_files(final):
        if not path.name.startswith("tokenizer") and path.name not in ("special_tokens_map.json", "chat_template.jinja"):
            path.unlink()
    assert layout.kind_of(final) is None

    with one_thread():
        code, out, err = run_ft("generate", str(final), PROMPT, "-n", "2")
    assert code == 0, err
    assert "holds only the distributed training state" in err
    made = load_file(final / HF_FILES[method])
    trained = load_file(layout.step_dir(home / "jobs" / method / layout.CHECKPOINTS, 2) / HF_FILES[method])
    assert made.keys() == trained.keys()
    for key in trained:
        assert torch.equal(made[key], trained[key]), key
    assert not (final / ".tmp-hf").exists()
