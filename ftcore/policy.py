"""Decisions about memory and precision that the planner prices and the trainer builds.

One owner for each rule that both `ft plan` (launcher) and the trainer need, so they cannot
drift apart. Torch-free: the trainer turns these answers into tensors.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

from ftcore.errors import UserError

# Above this many answer tokens the vocabulary projection runs in checkpointed chunks, so the
# (tokens × vocab) fp32 logits never exist all at once: 8k tokens × 128k vocab is 4 GiB.
LOSS_CHUNK_TOKENS = 4096


def glob_matches(name: str, globs: Iterable[str]) -> bool:
    """A LoRA glob matches a module's full name or its last component (`*_proj`, `q_proj`)."""
    last = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(last, g) for g in globs)


def lora_targets(linear_names: list[str], head_name: str | None, peft) -> list[str]:
    """The linear layers a `peft` section adapts, from a model's linear-layer names.

    `match_all_linear` takes every linear layer but the output head. A glob that matches no
    linear layer is an error, not silence; so is excluding everything that matched.
    """
    if peft.match_all_linear:
        chosen = [n for n in linear_names if n != head_name]
    else:
        chosen, unmatched = [], []
        for glob in peft.target_modules:
            hits = [n for n in linear_names if glob_matches(n, [glob])]
            if not hits:
                unmatched.append(glob)
            chosen += [n for n in hits if n not in chosen]
        if unmatched:
            kinds = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
            raise UserError(
                f"peft.target_modules {unmatched} match no linear layer of this model. "
                f"Its linear layers are named like: {', '.join(kinds[:12])} "
                f"(e.g. {linear_names[0] if linear_names else 'none'})"
            )
    chosen = [n for n in chosen if not glob_matches(n, peft.exclude_modules)]
    if not chosen:
        raise UserError("peft: every targeted layer is excluded by peft.exclude_modules")
    return sorted(chosen)
