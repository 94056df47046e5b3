"""The image contract: what a container image must hold to run ft's trainer.

With `container.mount_ft: true` (the default) ft binds its own `ftcore` and `trainer`
packages into the container and puts them on PYTHONPATH, so the image needs only a Python
(3.10 or newer) with the packages below: what a stock PyTorch + Hugging Face image has.
`ft image check` imports each of them inside the image; the README lists them; the
`train` extra of pyproject.toml installs them (a test holds the three together).
"""

from __future__ import annotations

from typing import NamedTuple

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

# Used only when a job asks for them; the trainer says which job setting needs which.
OPTIONAL = (
    Package("flash_attn", "flash-attn", "2.5"),  # model.attn_implementation=flash_attention_2
    Package("bitsandbytes", "bitsandbytes", "0.43"),  # model.quantization
    Package("liger_kernel", "liger-kernel", "0.5"),  # trainer.liger
    Package("tensorboard", "tensorboard", "2.14"),  # trainer.tensorboard
    Package("wandb", "wandb", "0.16"),  # trainer.wandb_project
    Package("datasets", "datasets", "2.18"),  # data.path naming a hub dataset
)

# The packages mount_ft binds into the container (at MOUNT_POINT, on PYTHONPATH).
FT_PACKAGES = ("ftcore", "trainer")
MOUNT_POINT = "/opt/ft"


def pip_line(packages=REQUIRED) -> str:
    return "pip install " + " ".join(f"'{p.dist}>={p.minimum}'" for p in packages)
