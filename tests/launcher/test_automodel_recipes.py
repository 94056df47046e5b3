"""NeMo AutoModel recipes (the SQuAD guide's own YAML, copied under tests/launcher/automodel/)
given to `ft submit --factory FILE`: recognised, translated, printed; what ft cannot do is
refused by name. NeMo-style words on the command line are read as ft's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftcore.errors import UserError
from launcher import config

RECIPES = Path(__file__).parent / "automodel"
REPO = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path, name: str, model: Path | None = None, **edits) -> Path:
    """The guide's YAML with only its model and data paths changed (and `edits`, section → keys)."""
    data = yaml.safe_load((RECIPES / name).read_text())
    if model is not None:
        data["model"]["pretrained_model_name_or_path"] = str(model)
        data["dataset"]["dataset_name"] = str(REPO / "factories/data/tiny_qa.jsonl")
        data["validation_dataset"]["dataset_name"] = str(REPO / "factories/data/tiny_qa_val.jsonl")
    for section, keys in edits.items():
        data[section] = {**data.get(section, {}), **keys}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_peft_guide_translates_key_by_key(tmp_path):
    resolved = config.resolve(str(RECIPES / "peft_guide.yaml"), ["container.runtime=none"])
    job = resolved.job
    assert job.model.path == "meta-llama/Llama-3.2-1B" and job.peft.target_modules == ["*.proj"]
    assert (job.peft.dim, job.peft.alpha) == (8, 32)
    assert (job.data.path, job.data.format, job.data.val_path, job.data.val_split) == (
        "rajpurkar/squad", "squad", "rajpurkar/squad", "validation")
    assert (job.data.micro_batch_size, job.data.global_batch_size, job.grad_accum_steps) == (8, 32, 4)
    assert job.trainer.limit_val_batches == 8  # 64 validation samples in batches of 8
    assert (job.checkpoint.every_steps, job.trainer.val_every_steps, job.trainer.seed) == (10, 10, 1111)
    assert (job.optim.name, job.optim.lr, job.optim.eps, job.checkpoint.hf_every_save) == ("adam", 1e-5, 1e-8, True)
    notes = "\n".join(resolved.notes)
    assert "peft.use_triton: ignored" in notes and "step_scheduler.grad_acc_steps 4" in notes


def test_sft_and_qlora_variants():
    sft = config.resolve(str(RECIPES / "sft_guide.yaml"), ["container.runtime=none"]).job
    assert sft.peft is None and sft.strategy == "fsdp2"
    qlora = config.resolve(str(RECIPES / "qlora_guide.yaml"), ["container.runtime=none"]).job
    assert qlora.model.quantization == "nf4" and qlora.peft.match_all_linear and qlora.peft.dropout == 0.1
    assert (qlora.peft.dim, qlora.model.path) == (16, "meta-llama/Llama-3.1-8B")


def test_what_has_no_ft_equivalent_is_refused_by_name(tmp_path):
    path = recipe(tmp_path, "peft_guide.yaml", distributed={"tp_size": 2},
                  optimizer={"_target_": "torch.optim.SGD"}, quantization={"load_in_8bit": True},
                  step_scheduler={"warm_restarts": 3})
    with pytest.raises(UserError) as err:
        config.resolve(str(path), [])
    text = "\n".join(err.value.problems)
    for key in ("distributed.tp_size", "optimizer._target_", "quantization.load_in_8bit",
                "step_scheduler.warm_restarts"):
        assert key in text
    assert len(err.value.problems) == 4  # nothing else: the rest of the guide translates


def test_an_ft_factory_with_a_stray_automodel_word_stays_an_ft_factory(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tiny\noptimizer:\n  lr: 1e-4\n")
    with pytest.raises(UserError, match="unknown key 'optimizer'"):
        config.resolve(str(path), [])


def test_nemo_words_on_the_command_line(ft):
    shown = ft("show", "--factory", "tiny", "peft=qlora")
    assert shown.returncode == 0, shown.stderr
    job = yaml.safe_load(shown.stdout)
    assert job["model"]["quantization"] == "nf4" and job["peft"]["method"] == "lora"
    assert "# peft=qlora read as peft=lora model.quantization=nf4" in shown.stdout
    shown = ft("show", "--factory", "llama32_1b_squad", "peft.peft_scheme=none",
               "model.pretrained_model_name_or_path=/models/x", "quantization.load_in_4bit=false")
    assert shown.returncode == 0, shown.stderr
    job = yaml.safe_load(shown.stdout)
    assert job["peft"] is None and job["model"]["path"] == "/models/x" and job["model"]["quantization"] is None
    assert "model.pretrained_model_name_or_path read as model.path" in shown.stdout


@pytest.mark.train
@pytest.mark.parametrize("name", ["sft_guide.yaml", "peft_guide.yaml", "qlora_guide.yaml"])
def test_the_guide_yaml_runs_locally_on_a_tiny_model(ft, tmp_path, name):
    """Only the model and data paths changed; CPU and no container on the command line."""
    pytest.importorskip("torch")
    from trainer_helpers import NF4_LLAMA, require_torchao, save_tiny_model

    if name.startswith("qlora"):
        require_torchao()

    base = save_tiny_model(tmp_path / "base", config=NF4_LLAMA if name.startswith("qlora") else None)
    path = recipe(tmp_path, name, model=base)
    result = ft("submit", "--factory", str(path), "--executor", "local", "--yes", "container.runtime=none",
                "trainer.accelerator=cpu", "trainer.max_steps=2", "checkpoint.every_steps=1", "trainer.val_every_steps=1",
                # seconds, not a minute, on a 2-core CPU: short rows, one validation batch
                "data.max_seq_length=96", "trainer.limit_val_batches=1", "trainer.check_loss=false")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "translated the NeMo AutoModel recipe" in result.stderr
    assert "step 2/2 (100%)" in result.stdout
    folder = Path(next(l for l in result.stderr.splitlines() if "Job folder: " in l).split("Job folder: ")[1])
    first = folder / "checkpoints" / "step-000001"  # an intermediate checkpoint (save_consolidated → HF files)
    from transformers import AutoModelForCausalLM

    best = ft("best", str(folder))  # the kept checkpoint with the lowest val_loss, as a path
    assert best.returncode == 0, best.stderr
    losses = {r["step"]: r["val_loss"] for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
              if "val_loss" in r}
    assert best.stdout.strip() == str(folder / "checkpoints" / f"step-{min(losses, key=losses.get):06d}")
    assert f"val_loss {min(losses.values()):.4f}" in best.stderr
    if name.startswith("sft"):
        AutoModelForCausalLM.from_pretrained(first)
    else:
        from peft import PeftModel

        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), first)
        assert json.loads((first / "adapter_config.json").read_text())["r"] == (16 if name.startswith("qlora") else 8)
