"""The image contract: what a container image must hold to run ft's trainer.

With `container.mount_ft: true` (the default) ft binds its own `ftcore` and `trainer`
packages into the container and puts them on PYTHONPATH, so the image needs only a Python
(3.10 or newer) with the packages below: what a stock PyTorch + Hugging Face image has.
`ft image check` imports each of them inside the image (`python -m ftcore.contract` with
ft's packages bound in prints `report()` as JSON); the README lists them; the `train` extra
of pyproject.toml installs them (a test holds the three together). This module runs inside
images of unknown age: standard library only, nothing newer than Python 3.6 at import.
"""

from __future__ import annotations

from typing import NamedTuple

# What `pip install` calls ft itself (pyproject.toml's name): `ft` on the package index
# belongs to an unrelated project. The command stays `ft`.
DISTRIBUTION = "ft-launch"

PYTHON_MIN = (3, 10)


class Package(NamedTuple):
    module: str  # what `import` names
    dist: str  # what `pip install` names
    minimum: str


# The floors are those of the NeMo 25.07 image (NeMo 2.4.0: NGC PyTorch 25.05, torch
# 2.8.0a0; transformers pinned >=4.51.0,<=4.52.0; peft unpinned, 0.15 or newer when it was
# built), which the shipped GPU factories run in. CI trains through the container stand-in in
# a second stock image holding exactly these minimums (scripts/make-test-image.sh --floors),
# except torch: only the pinned CPU build exists for it there, so torch's floor is held by
# the FEATURES probes below rather than by a run.
REQUIRED = (
    Package("torch", "torch", "2.8"),
    Package("transformers", "transformers", "4.51"),
    Package("peft", "peft", "0.15"),
    Package("safetensors", "safetensors", "0.4.3"),  # transformers 4.51's own floor
    Package("tokenizers", "tokenizers", "0.21"),  # likewise
    Package("huggingface_hub", "huggingface_hub", "0.30"),  # likewise
    Package("pydantic", "pydantic", "2.6"),
    Package("yaml", "PyYAML", "6.0.1"),  # 6.0 has no wheel for the Pythons ft runs on
)

# NF4 storage of a frozen base that FSDP2 can shard (model.quantization). torchao's
# NF4 layout is what ftcore.policy prices and trainer/quantize.py builds.
QUANTIZATION = Package("torchao", "torchao", "0.18.0")



def quantization_missing(python: str = "this Python") -> str:
    """The refusal (with its fix) for model.quantization without torchao: the launcher says it
    at submit when it knows the Python, the trainer before it loads anything."""
    return (f"model.quantization=nf4 needs the torchao package, which {python} does not have: "
            f"{pip_line([QUANTIZATION])} (or drop model.quantization)")


# lm-evaluation-harness, for `ft eval --tasks` (here, or in the evaluation job's image): the
# release whose simple_evaluate, TaskManager(include_path=) and HFLM(peft=) ft calls and tests.
LM_EVAL = Package("lm_eval", "lm-eval", "0.4.13")
ACCELERATE = Package("accelerate", "accelerate", "0.26")  # lm-eval's `hf` model imports it (lm-eval[hf]'s floor)

# Used only when a job asks for them; the trainer says which job setting needs which.
OPTIONAL = (
    Package("flash_attn", "flash-attn", "2.5"),  # model.attn_implementation=flash_attention_2
    QUANTIZATION,  # model.quantization
    Package("liger_kernel", "liger-kernel", "0.5"),  # trainer.liger
    Package("tensorboard", "tensorboard", "2.14"),  # trainer.tensorboard
    Package("wandb", "wandb", "0.16"),  # trainer.wandb_project
    Package("pyarrow", "pyarrow", "12.0"),  # data.path naming a hub dataset stored as parquet
    LM_EVAL,  # `ft eval --tasks`: lm-evaluation-harness
    ACCELERATE,  # likewise
)

# The packages mount_ft binds into the container (at MOUNT_POINT, on PYTHONPATH), and where
# the data files ft ships go, so that `ft:NAME` (ftcore.shipped) resolves inside as outside.
FT_PACKAGES = ("ftcore", "trainer")
# `ft train` resolves the job inside the container too: the launcher's library (whose
# `train` path imports nothing outside this contract) and the shipped factories travel as well.
FT_TRAIN_PACKAGES = (*FT_PACKAGES, "launcher")
# A short job after training (`ft eval --tasks` as a SLURM job) runs ft's model tools.
FT_TOOL_PACKAGES = (*FT_PACKAGES, "fttools")
MOUNT_POINT = "/opt/ft"
DATA_MOUNT = MOUNT_POINT + "/factories/data"


# ft's optional extras (pyproject's [project.optional-dependencies]): what each one installs.
EXTRAS = {
    "train": REQUIRED,
    "plot": (Package("matplotlib", "matplotlib", "3.7"),),
    "hub": (Package("huggingface_hub", "huggingface_hub", "0.24"),),
    "eval": (LM_EVAL, ACCELERATE),
}


def lm_eval_problem(found: dict) -> str | None:
    """Why a report() says this Python cannot run lm-eval (`ft eval --tasks`), or None."""
    for package in EXTRAS["eval"]:
        entry = found["packages"].get(package.module) or {"error": "not checked (an older ft's report)"}
        if entry.get("error"):
            return "%s is not installed (%s): %s" % (package.dist, entry["error"], pip_line(EXTRAS["eval"]))
        version = entry.get("version") or "unknown"
        if version != "unknown" and version_tuple(version) < version_tuple(package.minimum):
            return "%s %s is older than %s>=%s" % (package.dist, version, package.dist, package.minimum)
    return None


def pip_line(packages=REQUIRED) -> str:
    """The packages themselves, for an image built without ft's own extras."""
    return "pip install " + " ".join(f"'{p.dist}>={p.minimum}'" for p in packages)


def install_line(extra: str | None = None) -> str:
    """How to install ft (with one of its extras: train, plot, hub), as hints print it: from the
    wheel or folder this ft was installed from (pip's direct_url.json), or this checkout; ft is
    on no package index yet, so `pip install ft-launch[...]` would find nothing."""
    source = _installed_from()
    if source is None:
        return pip_line(EXTRAS[extra]) if extra else f"pip install {DISTRIBUTION}"
    return f"pip install '{source}[{extra}]'" if extra else f"pip install '{source}'"


def _installed_from() -> str | None:
    import json
    from importlib import metadata
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return str(root)  # run from a checkout
    try:
        url = json.loads(metadata.distribution(DISTRIBUTION).read_text("direct_url.json") or "{}").get("url", "")
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return None
    return unquote(urlparse(url).path) if url.startswith("file://") else None
def missing_extra(extra: str, what: str):
    """The UserError for a command whose optional packages are not installed: exit 2 and the
    line that installs them."""
    from ftcore.errors import UserError

    names = ", ".join(p.dist for p in EXTRAS[extra])
    return UserError(f"{what} needs {names}, which is not installed here: {install_line(extra)}",
                     hint=f"or, without ft's extras: {pip_line(EXTRAS[extra])}")


def require_extra(extra: str, what: str) -> None:
    import importlib

    try:
        for package in EXTRAS[extra]:
            importlib.import_module(package.module)
    except ImportError:
        raise missing_extra(extra, what) from None


def version_tuple(version: str) -> tuple:
    """`2.13.0+cpu` → (2, 13, 0): the numeric release, enough to compare with a minimum."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def report() -> dict:
    """What this Python has of the contract: run inside the image by `ft image check`."""
    import importlib
    import sys

    result = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
              "python_ok": sys.version_info[:2] >= PYTHON_MIN, "packages": {}, "cuda": None}
    for package in REQUIRED + OPTIONAL:
        entry = {"dist": package.dist, "minimum": package.minimum, "required": package in REQUIRED,
                 "version": None, "error": None}
        try:
            module = importlib.import_module(package.module)
            entry["version"] = str(getattr(module, "__version__", "") or dist_version(package.dist))
        except Exception as err:  # an image's broken install says anything: report it, go on
            entry["error"] = "%s: %s" % (type(err).__name__, err)
        result["packages"][package.module] = entry
    if result["packages"]["torch"]["version"]:
        torch = sys.modules["torch"]  # imported above, in the image
        result["cuda"] = {"build": torch.version.cuda, "available": torch.cuda.is_available(),
                          "devices": torch.cuda.device_count()}
    result["features"] = probe_features()
    return result


# ---------------------------------------------------------------- features
# What the trainer calls that a version number does not promise: each probe imports what it
# needs and tries the call's shape, so `ft image check` names a missing feature, not only an
# old version. The trainer asks the same probes where it adapts (one owner: this module).


class Feature(NamedTuple):
    name: str
    needed_for: str  # what in ft calls it
    required: bool  # False: ft adapts or falls back, and says which


def from_pretrained_dtype_keyword() -> str:
    """`dtype` (transformers 4.56 and later) or `torch_dtype` (before): the keyword that sets
    the weights' dtype in from_pretrained/from_config."""
    if _DTYPE_KEYWORD:
        return _DTYPE_KEYWORD[0]
    import inspect

    from transformers import PretrainedConfig

    newer = hasattr(PretrainedConfig, "dtype") or "dtype" in inspect.signature(PretrainedConfig.__init__).parameters
    _DTYPE_KEYWORD.append("dtype" if newer else "torch_dtype")
    return _DTYPE_KEYWORD[0]


_DTYPE_KEYWORD: list = []  # probed once per process


def with_dtype(dtype) -> dict:
    """The keyword argument that loads a model's weights in `dtype`, in this transformers."""
    return {from_pretrained_dtype_keyword(): dtype}


def config_dtype(config):
    """The dtype a model config names (`dtype`, or `torch_dtype` before transformers 4.56)."""
    return getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)


def set_config_dtype(config, dtype) -> None:
    """Make a model config name `dtype` (what its config.json then says the weights are in)."""
    setattr(config, from_pretrained_dtype_keyword(), dtype)


def torch_varlen_form():
    """How torch's variable-length attention takes what ft passes (causal through `window_size`,
    `scale`): "gqa" when it also takes `enable_gqa` (torch 2.12 and later), "heads" when it needs
    key/value heads repeated to the query heads (2.11), None when it is absent (before 2.10) or
    has neither keyword (2.10). docs/architecture.md cites the signatures."""
    import inspect

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    try:
        parameters = set(inspect.signature(varlen_attn).parameters)
    except (TypeError, ValueError):
        return None
    if not {"window_size", "scale"} <= parameters:
        return None
    return "gqa" if "enable_gqa" in parameters else "heads"


def _probe_attention_interface():
    from transformers import AttentionInterface

    if not hasattr(AttentionInterface, "register"):
        return "transformers.AttentionInterface has no register()"


def _probe_dtype_keyword():
    from_pretrained_dtype_keyword()  # informs: report() names the keyword ft will use


def _probe_fsdp2():
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard  # noqa: F401

    if not hasattr(FSDPModule, "set_requires_gradient_sync"):
        return "FSDPModule.set_requires_gradient_sync is missing"


def _probe_grad_norm():
    import torch

    for name in ("get_total_norm", "clip_grads_with_norm_"):
        if not hasattr(torch.nn.utils, name):
            return "torch.nn.utils.%s is missing" % name


def _probe_sdpa_gqa():
    import torch
    import torch.nn.functional as F

    q = torch.zeros(1, 2, 3, 4)
    kv = torch.zeros(1, 1, 3, 4)
    F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)


def _probe_dcp():
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,  # noqa: F401
                                                         get_state_dict, set_state_dict)

    import inspect

    wanted = {"full_state_dict", "cpu_offload", "ignore_frozen_params", "broadcast_from_rank0"}
    missing = wanted - set(inspect.signature(StateDictOptions).parameters)
    if missing:
        return "StateDictOptions lacks %s" % ", ".join(sorted(missing))


def _probe_torch_varlen():
    if torch_varlen_form() is None:
        return "absent or without window_size and scale: padding-free rows on a GPU without flash-attn run SDPA per example"


def _probe_peft_lora():
    import inspect

    from peft import LoraConfig, get_peft_model  # noqa: F401

    missing = {"r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type"} - set(
        inspect.signature(LoraConfig).parameters)
    if missing:
        return "peft.LoraConfig lacks %s" % ", ".join(sorted(missing))


def peft_adapts_parameters() -> bool:
    """Whether this peft adapts 3-D parameters (LoraConfig.target_parameters, peft 0.17+): the
    MoE experts of transformers 5's models."""
    import inspect

    from peft import LoraConfig

    return "target_parameters" in inspect.signature(LoraConfig).parameters


def _probe_peft_parameters():
    if not peft_adapts_parameters():
        return "peft.LoraConfig has no target_parameters (peft 0.17 added it)"


FEATURES = (
    (Feature("transformers.AttentionInterface", "data.padding_free (the default): ft's ft_varlen attention", True),
     _probe_attention_interface),
    (Feature("from_pretrained dtype keyword", "loading weights in the policy's dtype (ft adapts)", False),
     _probe_dtype_keyword),
    (Feature("FSDP2 fully_shard", "strategy=fsdp2, model.cpu_offload", True), _probe_fsdp2),
    (Feature("torch.nn.utils.get_total_norm", "the gradient norm and trainer.grad_clip", True), _probe_grad_norm),
    (Feature("SDPA enable_gqa", "attention on CPU and the per-example fallback", True), _probe_sdpa_gqa),
    (Feature("torch.distributed.checkpoint.state_dict", "checkpoints and the final export", True), _probe_dcp),
    (Feature("peft LoraConfig", "LoRA and QLoRA jobs", True), _probe_peft_lora),
    (Feature("peft target_parameters", "LoRA on MoE experts kept as 3-D weights (peft.experts)", False),
     _probe_peft_parameters),
    (Feature("torch varlen_attn(window_size, scale)", "padding-free attention on a GPU without flash-attn",
             False), _probe_torch_varlen),
)


def probe_features() -> dict:
    """{feature name: {needed_for, required, ok, detail}}, probed in this Python."""
    found = {}
    for feature, probe in FEATURES:
        try:
            missing = probe()
        except Exception as err:  # a missing module or an older signature: the reason is the message
            missing = "%s: %s" % (type(err).__name__, err)
        found[feature.name] = {"needed_for": feature.needed_for, "required": feature.required,
                               "ok": missing is None, "detail": missing}
    if found["from_pretrained dtype keyword"]["ok"]:
        found["from_pretrained dtype keyword"]["detail"] = "ft passes `%s=`" % from_pretrained_dtype_keyword()
    return found


def installed() -> dict:
    """report()'s answer from package metadata alone, importing nothing: what `ft submit` asks
    the Python a job without a container will run with (a second, not the minute an import of
    torch can take on a login node). A broken install shows only when the trainer imports it."""
    import importlib.util
    import sys

    result = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
              "python_ok": sys.version_info[:2] >= PYTHON_MIN, "packages": {}, "cuda": None}
    for package in REQUIRED + OPTIONAL + (Package("trainer", DISTRIBUTION, "0"),):
        entry = {"dist": package.dist, "minimum": package.minimum, "required": package in REQUIRED,
                 "version": None, "error": None}
        try:
            if importlib.util.find_spec(package.module) is None:
                entry["error"] = "not installed"
            else:
                entry["version"] = dist_version(package.dist)
        except Exception as err:
            entry["error"] = "%s: %s" % (type(err).__name__, err)
        result["packages"][package.module] = entry
    return result


def dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "unknown"


def problems(found: dict) -> list:
    """What in a report() stops the trainer: one line per missing or too-old requirement."""
    lines = []
    if not found["python_ok"]:
        lines.append("Python %s is too old: ft's trainer needs Python %d.%d or newer"
                     % ((found["python"],) + PYTHON_MIN))
    for module, entry in found["packages"].items():
        if not entry["required"]:
            continue
        if entry["error"]:
            lines.append("%s is missing (%s); the contract needs %s>=%s"
                         % (entry["dist"], entry["error"], entry["dist"], entry["minimum"]))
        elif entry["version"] != "unknown" and version_tuple(entry["version"]) < version_tuple(entry["minimum"]):
            lines.append("%s %s is older than the contract's %s>=%s"
                         % (entry["dist"], entry["version"], entry["dist"], entry["minimum"]))
    for name, entry in found.get("features", {}).items():  # (a report from an older ft has none)
        if entry["required"] and not entry["ok"]:
            lines.append("%s is missing (%s), which %s needs" % (name, entry["detail"], entry["needed_for"]))
    return lines


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(installed() if "--installed" in sys.argv[1:] else report()))
