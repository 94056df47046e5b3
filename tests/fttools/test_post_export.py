"""`ft export --to vllm`: the layout and keys vLLM loads, checked without vLLM installed.

vLLM loads a full model folder like transformers does (config.json, safetensors, tokenizer),
and a LoRA adapter from adapter_config.json (r, lora_alpha, target_modules) plus
adapter_model.safetensors whose tensor names say which layer each matrix belongs to
(`base_model.model.<module>.lora_A.weight`); it refuses DoRA, modules_to_save and biases.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest
from post_helpers import one_thread, run_ft, train_job

from ftcore import files, layout
from launcher import locate
from ftcore.errors import UserError
from fttools.export import check_adapter, export, safetensors_header

pytestmark = pytest.mark.train

PEFT_KEY = re.compile(r"^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+_proj\.lora_[AB]\.weight$")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    pytest.importorskip("torch")
    with one_thread():  # for the whole module: its tests run these models too
        home = tmp_path_factory.mktemp("home")
        yield {"lora": train_job(home, "lora"), "sft": train_job(home, "sft", peft=None)}


def _copy(ckpt, tmp_path, **config):
    """The adapter outside its job, with adapter_config.json changed."""
    folder = tmp_path / "adapter"
    shutil.copytree(ckpt.path, folder, ignore=shutil.ignore_patterns("ft_state"))
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return locate.find_checkpoint(str(folder))


def test_sft_export_is_a_complete_model_folder(jobs, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = locate.find_checkpoint(str(jobs["sft"]))
    done = export(ckpt, "vllm", tmp_path / "out")
    names = {p.name for p in done.out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "vllm_serve.txt", "README.md"} <= names
    assert "ft_state" not in names  # optimizer state and RNG streams stay behind
    assert safetensors_header(done.out / "model.safetensors").keys() == safetensors_header(ckpt.path / "model.safetensors").keys()
    config = json.loads((done.out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["use_cache"] is True
    assert shlex.split((done.out / "vllm_serve.txt").read_text()) == shlex.split(done.command)
    assert shlex.split(done.command)[:3] == ["vllm", "serve", str(done.out)]
    assert "--enable-lora" not in done.command
    AutoModelForCausalLM.from_pretrained(done.out)


def test_lora_export_has_the_files_and_keys_vllm_reads(jobs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ckpt = locate.find_checkpoint(str(jobs["lora"]))
    done = export(ckpt, "vllm", tmp_path / "adapter")
    names = {p.name for p in done.out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "vllm_serve.txt"} <= names
    assert "ft_state" not in names and "model.safetensors" not in names
    config = json.loads((done.out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert isinstance(config["lora_alpha"], int)
    assert config["base_model_name_or_path"] == ckpt.base and config["target_modules"]
    assert not config["modules_to_save"] and not config["use_dora"] and config["bias"] == "none"
    keys = safetensors_header(done.out / "adapter_model.safetensors")
    assert keys and all(PEFT_KEY.match(k) for k in keys), list(keys)[:3]
    argv = shlex.split(done.command)
    assert argv[:3] == ["vllm", "serve", ckpt.base] and "--enable-lora" in argv
    name, path = argv[argv.index("--lora-modules") + 1].split("=", 1)
    assert path == str(done.out) and re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert "--max-lora-rank" not in argv  # r=8 is within vLLM's default of 16
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ckpt.base), done.out)  # peft still loads it


def test_a_rank_above_vllms_default_asks_for_max_lora_rank(jobs, tmp_path):
    done = export(_copy(locate.find_checkpoint(str(jobs["lora"])), tmp_path, r=24), "vllm", tmp_path / "out")
    argv = shlex.split(done.command)
    assert argv[argv.index("--max-lora-rank") + 1] == "32"


def test_what_vllm_cannot_load_is_refused_all_at_once(jobs, tmp_path):
    ckpt = _copy(locate.find_checkpoint(str(jobs["lora"])), tmp_path, use_dora=True, modules_to_save=["lm_head"], bias="all")
    with pytest.raises(UserError) as caught:
        export(ckpt, "vllm", tmp_path / "out")
    text = "\n".join(caught.value.problems)
    assert "DoRA" in text and "modules_to_save" in text and "bias" in text
    assert "--merge" in caught.value.hint
    assert not (tmp_path / "out").exists()


def test_tensors_under_other_names_are_refused(jobs, tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = _copy(locate.find_checkpoint(str(jobs["lora"])), tmp_path)
    save_file({"base_model.model.lm_head.weight": torch.zeros(4, 4),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
              ckpt.path / "adapter_model.safetensors")
    problems, _ = check_adapter(ckpt.path)
    assert len(problems) == 1 and "lm_head.weight" in problems[0]


def test_lora_on_the_output_head_is_a_warning(jobs, tmp_path):
    import torch
    from safetensors.torch import save_file

    ckpt = _copy(locate.find_checkpoint(str(jobs["lora"])), tmp_path)
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64),
               "base_model.model.lm_head.lora_B.weight": torch.zeros(384, 8)}, ckpt.path / "adapter_model.safetensors")
    problems, warnings = check_adapter(ckpt.path, "LlamaForCausalLM")
    assert problems == [] and "lm_head" in warnings[0]


def test_merge_exports_one_plain_model(jobs, tmp_path):
    from transformers import AutoModelForCausalLM

    done = export(locate.find_checkpoint(str(jobs["lora"])), "vllm", tmp_path / "merged", merge=True, dtype="bf16")
    assert (done.out / "model.safetensors").is_file() and not (done.out / "adapter_config.json").exists()
    assert "--enable-lora" not in done.command and (done.out / "vllm_serve.txt").is_file()
    assert json.loads((done.out / "config.json").read_text())["dtype"] == "bfloat16"
    AutoModelForCausalLM.from_pretrained(done.out)


def test_wrong_requests_are_refused(jobs, tmp_path):
    sft = locate.find_checkpoint(str(jobs["sft"]))
    with pytest.raises(UserError, match="already a full model"):
        export(sft, "vllm", tmp_path / "a", merge=True)
    with pytest.raises(UserError, match="--to tgi"):
        export(sft, "tgi", tmp_path / "b")
    with pytest.raises(UserError, match="with --merge only"):
        export(sft, "vllm", tmp_path / "c", dtype="bf16")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_beside_the_job_and_prints_the_command(jobs):
    code, stdout, stderr = run_ft("export", str(jobs["sft"]), "--to", "vllm")
    assert code == 0, stderr
    out = jobs["sft"] / "exports" / "step-000002-vllm"
    assert stdout.splitlines() == [str(out), f"serve it with: {(out / 'vllm_serve.txt').read_text().strip()}"]
    made = (out / "ft_output.json").stat().st_mtime_ns
    again = run_ft("export", str(jobs["sft"]), "--to", "vllm")  # the same export: kept as it is
    assert again[0] == 0 and again[1] == stdout and "up to date" in again[2]
    assert (out / "ft_output.json").stat().st_mtime_ns == made
    (out / "config.json").write_text("{}")  # someone's edit: --overwrite remakes the whole folder
    code, _, stderr = run_ft("export", str(jobs["sft"]), "--to", "vllm", "--overwrite")
    assert code == 0, stderr
    assert (out / "config.json").read_text() != "{}" and "up to date" not in stderr
    (out / "ft_output.json").unlink()  # a folder ft did not make this way is never written over
    code, _, stderr = run_ft("export", str(jobs["sft"]), "--to", "vllm")
    assert code == 2 and "not empty" in stderr and "--overwrite" in stderr
