"""What a CKPT argument names, and folders written whole or not at all.

    ft merge 12345            # job id: its newest checkpoint
    ft merge 2026112          # a unique prefix of a job id or folder name
    ft merge ~/ft/jobs/…      # a job folder (or one sweep task's folder, tasks/N)
    ft merge …/checkpoints/step-000040     # one checkpoint (or any model folder)

A checkpoint folder is one of two kinds, told apart by its files: a LoRA adapter
(``adapter_config.json``, loaded onto its base with peft) or a full model (``config.json``
and weights, loaded with ``AutoModelForCausalLM``). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from launcher import jobdir, jobs
from launcher.errors import UserError

LORA = "lora"
FULL = "full"
# The trainer's resume state: optimizer moments and RNG streams, not part of a model.
TRAINING_STATE = "ft_state"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    kind: str  # LORA or FULL
    run_dir: Path | None  # the job (or sweep task) folder that wrote it, when there is one

    @property
    def is_lora(self) -> bool:
        return self.kind == LORA

    @property
    def adapter_config(self) -> dict[str, Any]:
        return _read_json(self.path / "adapter_config.json") if self.is_lora else {}

    @property
    def base(self) -> str | None:
        """What a LoRA adapter is applied to: a local folder or a hub id."""
        return self.adapter_config.get("base_model_name_or_path") or None

    @property
    def job_config(self) -> dict[str, Any]:
        """The resolved job that trained this checkpoint ({} for a folder from elsewhere)."""
        if self.run_dir is None:
            return {}
        try:
            return yaml.safe_load((self.run_dir / jobdir.CONFIG).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    @property
    def label(self) -> str:
        """A short name: `<job folder>-<step>` for a job's checkpoint, else the folder name."""
        if self.run_dir is not None and self.path.parent.name == "checkpoints":
            job = self.run_dir.name if self.run_dir.parent.name != "tasks" else f"{self.run_dir.parent.parent.name}-task{self.run_dir.name}"
            return f"{job}-{self.path.name}"
        return self.path.name

    def default_output(self, suffix: str) -> Path:
        """`<job>/exports/<step>-<suffix>` for a job's checkpoint, else `<folder>-<suffix>` beside it."""
        if self.run_dir is not None and self.path.parent.name == "checkpoints":
            return self.run_dir / "exports" / f"{self.path.name}-{suffix}"
        return self.path.with_name(f"{self.path.name}-{suffix}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} should hold a JSON object")
    return value


def kind_of(folder: Path) -> str | None:
    """LORA, FULL, or None when the folder holds no loadable model."""
    if (folder / "adapter_config.json").is_file():
        return LORA
    if (folder / "config.json").is_file() and any((folder / name).is_file() for name in _WEIGHTS):
        return FULL
    return None


def _owning_run(checkpoint: Path) -> Path | None:
    """`<run>/checkpoints/step-N` → `<run>` when that is a job (or sweep task) folder."""
    run = checkpoint.parent.parent
    if checkpoint.parent.name == "checkpoints" and (run / jobdir.CONFIG).is_file():
        return run
    return None


def resolve(spec: str, root: Path | None = None) -> Checkpoint:
    """A checkpoint folder, or the newest checkpoint of the job that `spec` names."""
    candidate = Path(spec).expanduser()
    if candidate.is_dir():
        kind = kind_of(candidate)
        if kind:
            path = candidate.resolve()
            return Checkpoint(path, kind, _owning_run(path))
        if candidate.name == "checkpoints" and (candidate.parent / jobdir.CONFIG).is_file():
            candidate = candidate.parent
        if not (candidate / jobdir.CONFIG).is_file():
            raise UserError(f"{candidate} is neither a checkpoint (adapter_config.json, or config.json with "
                            "weights) nor a job folder (config.yaml)")
    view = jobs.find(str(candidate) if candidate.is_dir() else spec, root)
    runs = view.run_dirs
    if len(runs) > 1:
        listing = ", ".join(str(r) for r in runs[:4])
        raise UserError(f"{view.folder.name} is a sweep of {len(runs)} runs: name one of them ({listing}, ...)")
    run = runs[0]
    name = _pointer(run)
    if not name:
        raise UserError(f"job {view.job_id or run.name} has no checkpoint yet ({run / 'checkpoints'})",
                        hint=f"`ft status {view.job_id or run}` shows how far it got")
    folder = run / "checkpoints" / name
    kind = kind_of(folder)
    if kind is None:
        raise UserError(f"{folder} (named by {run / 'checkpoints' / 'latest'}) holds no model files")
    return Checkpoint(folder.resolve(), kind, run.resolve())


def _pointer(run: Path) -> str | None:
    try:
        return (run / "checkpoints" / "latest").read_text().strip() or None
    except OSError:
        return None


def model_files(folder: Path) -> list[Path]:
    """Every file of the loadable model in `folder`, without the trainer's resume state."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and TRAINING_STATE not in p.relative_to(folder).parts[:1]
    )


# --- output folders ----------------------------------------------------------------------------


def check_output(out: Path) -> Path:
    """Refuse a destination that holds anything: ft never writes over files."""
    out = out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose another --out, or remove it first")
    return out


@contextlib.contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; rename it to `out` once the block succeeds.

    A reader (or a crash) sees no `out` or the complete one, never a half-written folder.
    """
    out = check_output(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; a model folder is for sharing
        if out.is_dir():
            out.rmdir()  # empty (checked above); fails if something appeared meanwhile
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
