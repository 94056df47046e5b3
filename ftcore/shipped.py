"""Where ft's own bundled folders are: templates, factories and the data files factories name.

In a source checkout they sit at the top of the repository; an installed wheel carries them
inside the launcher package (launcher/_bundled/); inside a container, `container.mount_ft`
binds the data folder beside the packages. The checkout wins, so edits show at once.
"""

from __future__ import annotations

from pathlib import Path

from ftcore.errors import UserError

ROOT = Path(__file__).resolve().parent.parent  # the folder that holds ftcore/, trainer/, ...
PREFIX = "ft:"  # `ft:tiny_qa.jsonl` names a file under factories/data/


def bundled(name: str) -> Path:
    """`templates` or `factories`: the checkout's folder, else the wheel's copy."""
    checkout = ROOT / name
    if checkout.is_dir() and (ROOT / "pyproject.toml").is_file():
        return checkout
    wheel = ROOT / "launcher" / "_bundled" / name
    return wheel if wheel.is_dir() else checkout


def data_dir() -> Path:
    return bundled("factories") / "data"


def shipped_file(name: str) -> Path:
    """A file ft ships under factories/data/."""
    candidate = data_dir() / name
    if not candidate.exists():
        raise UserError(f"{PREFIX}{name} is not a file ft ships (looked in {data_dir()})")
    return candidate


def expand(spec: str) -> str:
    """`ft:NAME` → the shipped file's path; anything else unchanged."""
    return str(shipped_file(spec[len(PREFIX):])) if spec.startswith(PREFIX) else spec
