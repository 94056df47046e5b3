"""`ft export --to vllm`'s rules (fttools/export.py VLLM_*) held to vLLM's own Python: its model
classes' SupportsLoRA, its MoE LoRA formats, its --lora-modules parser and its PEFTHelper on an
adapter ft exported. vLLM is installed without its dependencies (`pip install --no-deps vllm`,
VLLM_TARGET_DEVICE=cpu: its torch pin is not ft's) plus the few small packages its loader
imports (pyproject's `vllm-rules` extra, .ci/run); it runs here on CPU, in its own process
(importing it takes a while, and it must not be loaded into the test process)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fttools import export
from fttools.tiny import save_tiny_model, tiny_job, train
from ftcore import layout
from launcher import locate

pytestmark = pytest.mark.train

PROBE = r"""
import json, os, sys
os.environ["VLLM_TARGET_DEVICE"] = "cpu"
import vllm
from vllm.model_executor.models.registry import ModelRegistry
from vllm.model_executor.models import interfaces
from vllm.config.lora import LoRAConfig
from vllm.lora.peft_helper import PEFTHelper
from vllm.entrypoints.common.cli_args import LoRAParserAction
import argparse, inspect

asked = json.loads(sys.argv[1])
found = {"version": vllm.__version__, "lora": {}, "is_3d": {}}
for arch in asked["architectures"]:
    cls = ModelRegistry._try_load_model_cls(arch)
    found["lora"][arch] = interfaces.supports_lora(cls)
    found["is_3d"][arch] = bool(getattr(cls, "is_3d_moe_weight", False))
from vllm.model_executor.models import mixtral
found["mixtral_experts_under"] = "block_sparse_moe" if "block_sparse_moe" in inspect.getsource(mixtral) else "?"
found["mixed_format_flag"] = "enable_mixed_moe_lora_format" in LoRAConfig.__dataclass_fields__
parser = argparse.ArgumentParser()
parser.add_argument("--lora-modules", nargs="+", action=LoRAParserAction)
module = parser.parse_args(["--lora-modules", asked["lora_module"]]).lora_modules[0]
found["module"] = {"name": module.name, "path": module.path, "is_3d": module.is_3d_lora_weight}
helper = PEFTHelper.from_local_dir(asked["adapter"], max_position_embeddings=512)
helper.validate_legal(LoRAConfig(max_lora_rank=16))
found["helper"] = {"r": helper.r, "alpha": helper.lora_alpha, "targets": sorted(helper.target_modules)}
print("FOUND " + json.dumps(found))
"""


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter on the tiny Llama, exported by ft."""
    home = tmp_path_factory.mktemp("vllm")
    base = save_tiny_model(home / "base")
    run = home / "run"
    job = tiny_job(model={"init": "pretrained", "path": str(base), "config": {}}, trainer={"max_steps": 1},
                   checkpoint={"every_steps": 1})
    assert train(run, job) == 0
    ckpt = locate.find_checkpoint(str(layout.step_dir(run / layout.CHECKPOINTS, 1)))
    return export.export(ckpt, out=home / "export")


def vllm_says(adapter_folder: Path, lora_module: str) -> dict:
    try:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            pytest.skip("vllm is not installed (pip install --no-deps vllm==" + export.VLLM_VERSION + ", see .ci/run)")
    except ValueError:
        pytest.skip("vllm is not importable here")
    architectures = [*export.VLLM_NO_LORA, *export.VLLM_EXPERT_LORA, *export.VLLM_EXPERT_WHY, "LlamaForCausalLM"]
    asked = json.dumps({"architectures": architectures, "adapter": str(adapter_folder), "lora_module": lora_module})
    result = subprocess.run([sys.executable, "-c", PROBE, asked], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    line = next((l for l in result.stdout.splitlines() if l.startswith("FOUND ")), None)
    assert line, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(line[len("FOUND "):])


def test_the_export_rules_are_vllms_own(adapter):
    module = json.dumps({"name": "n", "path": str(adapter.out), "is_3d_lora_weight": True})
    found = vllm_says(adapter.out, module)
    assert found["version"] == export.VLLM_VERSION  # the version the rules were read from
    for architecture in export.VLLM_NO_LORA:
        assert found["lora"][architecture] is False, architecture  # refused: --merge is the way
    for architecture in (*export.VLLM_EXPERT_LORA, *export.VLLM_EXPERT_WHY, "LlamaForCausalLM"):
        assert found["lora"][architecture] is True, architecture
    # gpt-oss's experts are 3-D in vLLM too (peft's layout loads as it is); Qwen3-MoE's are not,
    # hence the mixed-format flag and the 3-D mark on the module
    assert found["is_3d"]["GptOssForCausalLM"] and not found["is_3d"]["Qwen3MoeForCausalLM"]
    assert export.VLLM_EXPERT_LORA["GptOssForCausalLM"] == ((), False)
    assert found["mixed_format_flag"] and export.VLLM_EXPERT_LORA["Qwen3MoeForCausalLM"][1]
    assert found["module"] == {"name": "n", "path": str(adapter.out), "is_3d": True}
    assert found["mixtral_experts_under"] == "block_sparse_moe"  # not peft's mlp.experts: refused
    # vLLM's own PEFTHelper reads and accepts the adapter ft wrote
    written = json.loads((adapter.out / "adapter_config.json").read_text())
    assert found["helper"] == {"r": written["r"], "alpha": written["lora_alpha"],
                               "targets": sorted(written["target_modules"])}
    command = shlex.split(adapter.command)
    assert command[:2] == ["vllm", "serve"] and "--enable-lora" in command


def test_a_base_vllm_serves_no_lora_on_is_refused_with_merge_as_the_way_out(adapter, tmp_path):
    for architecture, name in export.VLLM_NO_LORA.items():
        problems, _ = export.check_adapter(adapter.out, architecture)
        assert any(f"serves no LoRA adapter on {name}" in p for p in problems)
    problems, warnings = export.check_adapter(adapter.out, None)
    assert not problems and any("refuses LoRA on GPT-2" in w for w in warnings)
    moe = tmp_path / "moe"
    moe.mkdir()
    config = {**json.loads((adapter.out / "adapter_config.json").read_text()),
              "target_parameters": ["model.layers.0.mlp.experts.gate_up_proj"]}
    (moe / "adapter_config.json").write_text(json.dumps(config))
    (moe / "adapter_model.safetensors").write_bytes((adapter.out / "adapter_model.safetensors").read_bytes())
    assert not export.check_adapter(moe, "GptOssForCausalLM")[0]
    assert not export.check_adapter(moe, "Qwen3MoeForCausalLM")[0]
    assert any("block_sparse_moe" in p for p in export.check_adapter(moe, "MixtralForCausalLM")[0])
    assert any("target_parameters" in p for p in export.check_adapter(moe, "DeepseekV3ForCausalLM")[0])


def test_a_qwen3_moe_expert_adapter_exports_with_the_flags_vllm_needs(adapter, tmp_path):
    import shutil

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe"}))
    folder = tmp_path / "adapter"
    shutil.copytree(adapter.out, folder)
    config = {**json.loads((folder / "adapter_config.json").read_text()), "base_model_name_or_path": str(base),
              "target_parameters": ["model.layers.0.mlp.experts.gate_up_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    for leftover in ("vllm_serve.txt", "README.md", "ft_output.json"):
        (folder / leftover).unlink(missing_ok=True)
    done = export.export(locate.find_checkpoint(str(folder)), out=tmp_path / "out")
    command = shlex.split(done.command)
    assert command[:3] == ["vllm", "serve", str(base)]
    assert "--enable-mixed-moe-lora-format" in command
    module = json.loads(command[command.index("--lora-modules") + 1])
    assert module["is_3d_lora_weight"] is True and module["path"] == str((tmp_path / "out").absolute())
