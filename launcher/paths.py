"""Where ft finds its templates, factories and job folders.

In a source checkout templates/ and factories/ sit at the top of the repository; an
installed wheel carries them inside the package (launcher/_bundled/). The checkout wins
so that an editable install sees edits at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from ftcore import shipped
from ftcore.files import expand


def templates_dir() -> Path:
    return shipped.bundled("templates")


def factories_dir() -> Path:
    return shipped.bundled("factories")


def config_dir() -> Path:
    """The user's ft config folder: $FT_CONFIG_DIR, else $XDG_CONFIG_HOME/ft, else ~/.config/ft."""
    if os.environ.get("FT_CONFIG_DIR"):
        return expand(os.environ["FT_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return expand(base) / "ft"


HOME_ENV = "FT_HOME"
DEFAULT_HOME = "~/ft"  # FT_HOME when unset, here and on a cluster's login node
JOBS = "jobs"  # the job folders, under FT_HOME


def ft_home() -> Path:
    """Root of all job folders: $FT_HOME, else ~/ft."""
    return expand(os.environ.get(HOME_ENV) or DEFAULT_HOME)


def shell_home() -> str:
    """FT_HOME as a POSIX shell expands it on another machine (a cluster's login node)."""
    return f'${{{HOME_ENV}:-$HOME/{DEFAULT_HOME.removeprefix("~/")}}}'


def jobs_root() -> Path:
    return ft_home() / JOBS


def package_dir(name: str) -> Path:
    """The folder of one of ft's own packages (`trainer`, `launcher`), found without importing it."""
    return shipped.ROOT / name
