"""ft's dtype names: the one map from what a config or a flag says (`bf16`) to torch's name
for it and its size. Torch-free: the trainer and the model tools turn the names into
`torch.<name>` themselves; the planner multiplies by the sizes."""

from __future__ import annotations

TORCH = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # ft's name → torch.<attribute>
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
NAMES = tuple(TORCH)


def name_of(torch_name: object) -> str | None:
    """ft's name for `torch.bfloat16`, "torch.bfloat16", "bfloat16" or "bf16"; None for another dtype."""
    text = str(torch_name).removeprefix("torch.")
    if text in TORCH:
        return text
    return next((name for name, attr in TORCH.items() if attr == text), None)
