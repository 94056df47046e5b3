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


REQUIRED = (
    Package("torch", "torch", "2.6"),  # get_total_norm, FSDP2 gradient divide factor
    Package("transformers", "transformers", "4.45"),
    Package("peft", "peft", "0.13"),
    Package("safetensors", "safetensors", "0.4"),
    Package("tokenizers", "tokenizers", "0.19"),
    Package("huggingface_hub", "huggingface_hub", "0.24"),
    Package("pydantic", "pydantic", "2.6"),
    Package("yaml", "PyYAML", "6.0"),
)

# NF4 storage of a frozen base that FSDP2 can shard (model.quantization). torchao's
# NF4 layout is what ftcore.policy prices and trainer/quantize.py builds.
QUANTIZATION = Package("torchao", "torchao", "0.18.0")



def quantization_missing(python: str = "this Python") -> str:
    """The refusal (with its fix) for model.quantization without torchao: the launcher says it
    at submit when it knows the Python, the trainer before it loads anything."""
    return (f"model.quantization=nf4 needs the torchao package, which {python} does not have: "
            f"{pip_line([QUANTIZATION])} (or drop model.quantization)")


# Used only when a job asks for them; the trainer says which job setting needs which.
OPTIONAL = (
    Package("flash_attn", "flash-attn", "2.5"),  # model.attn_implementation=flash_attention_2
    QUANTIZATION,  # model.quantization
    Package("liger_kernel", "liger-kernel", "0.5"),  # trainer.liger
    Package("tensorboard", "tensorboard", "2.14"),  # trainer.tensorboard
    Package("wandb", "wandb", "0.16"),  # trainer.wandb_project
    Package("pyarrow", "pyarrow", "12.0"),  # data.path naming a hub dataset stored as parquet
)

# The packages mount_ft binds into the container (at MOUNT_POINT, on PYTHONPATH), and where
# the data files ft ships go, so that `ft:NAME` (ftcore.shipped) resolves inside as outside.
FT_PACKAGES = ("ftcore", "trainer")
# `ft train` resolves the job inside the container too: the launcher's library (whose
# `train` path imports nothing outside this contract) and the shipped factories travel as well.
FT_TRAIN_PACKAGES = (*FT_PACKAGES, "launcher")
MOUNT_POINT = "/opt/ft"
DATA_MOUNT = MOUNT_POINT + "/factories/data"


# ft's optional extras (pyproject's [project.optional-dependencies]): what each one installs.
EXTRAS = {
    "train": REQUIRED,
    "plot": (Package("matplotlib", "matplotlib", "3.7"),),
    "hub": (Package("huggingface_hub", "huggingface_hub", "0.24"),),
}


def pip_line(packages=REQUIRED) -> str:
    """The packages themselves, for an image built without ft's own extras."""
    return "pip install " + " ".join(f"'{p.dist}>={p.minimum}'" for p in packages)


def install_line(extra: str | None = None) -> str:
    """How to install ft (with one of its extras: train, plot, hub), as hints print it."""
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"
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
            entry["version"] = str(getattr(module, "__version__", "") or _dist_version(package.dist))
        except Exception as err:  # an image's broken install says anything: report it, go on
            entry["error"] = "%s: %s" % (type(err).__name__, err)
        result["packages"][package.module] = entry
    if result["packages"]["torch"]["version"]:
        torch = sys.modules["torch"]  # imported above, in the image
        result["cuda"] = {"build": torch.version.cuda, "available": torch.cuda.is_available(),
                          "devices": torch.cuda.device_count()}
    return result


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
                entry["version"] = _dist_version(package.dist)
        except Exception as err:
            entry["error"] = "%s: %s" % (type(err).__name__, err)
        result["packages"][package.module] = entry
    return result


def _dist_version(dist: str) -> str:
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
    return lines


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(installed() if "--installed" in sys.argv[1:] else report()))
