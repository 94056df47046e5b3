"""Job folders: one per submission, never shared, never half-written.

A folder is built under a hidden temporary name and renamed into place in one step, so a
reader sees either nothing or the whole folder. Names carry the time and a random suffix;
a rename onto an existing (non-empty) folder fails, and then another name is drawn.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from ftcore.files import write_atomic
from ftcore.layout import COMMAND, CONFIG, LOGS, RECORD, SCRIPT  # noqa: F401  (the folder's names)
from launcher import __version__, paths


def safe_name(text: str) -> str:
    """`text` as part of a folder name: letters, digits and -_. only."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:40] or "job"


def new_name(factory: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{safe_name(factory)}-{secrets.token_hex(3)}"


def create(
    factory: str,
    files: Callable[[Path], dict[str, str]],
    root: Path | None = None,
) -> Path:
    """A new complete job folder under `root`; `files(final_path)` gives its contents,
    so files may mention the folder's final path."""
    root = root or paths.jobs_root()
    for _ in range(100):
        final = root / new_name(factory)
        if not final.exists() and create_at(final, files):
            return final
    raise RuntimeError(f"could not find a free job folder name under {root}")


def create_at(final: Path, files: Callable[[Path], dict[str, str]]) -> bool:
    """Build the folder `final` whole, under a temporary name, and rename it into place.
    False (and nothing written) when `final` exists already or appeared meanwhile."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        (tmp / LOGS).mkdir()
        for name, text in files(final).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        os.rename(tmp, final)  # fails if `final` appeared meanwhile (it is never empty)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            return False
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv if argv is None else argv)
    argv[0] = Path(argv[0]).name if argv else "ft"
    return shlex.join(argv) + "\n"


def config_text(job_dict: dict[str, Any]) -> str:
    header = f"# Resolved by ft {__version__}; the trainer validates this file again.\n"
    return header + yaml.safe_dump(job_dict, sort_keys=False)


def record_text(**fields: Any) -> str:
    record = {"ft_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    return json.dumps(record, indent=2) + "\n"


def write_record(job_folder: Path, **fields: Any) -> None:
    write_atomic(job_folder / RECORD, record_text(**fields))


def read_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}
