"""Upload a checkpoint (or an export) to the Hugging Face Hub.

    ft push JOB me/my-model --dry-run       # what would go up, with sizes
    HF_TOKEN=hf_... ft push JOB me/my-model --private

The model files go up as they are, without the trainer's resume state (ft_state/: optimizer
moments and RNG streams). The token comes from $HF_TOKEN only, never from a file or the
command line, and ft writes nothing locally: a failed upload leaves everything as it was.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ftcore.layout import TRAINING_STATE, Checkpoint, model_files
from ftcore.errors import UserError

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Upload:
    folder: Path
    repo_id: str
    files: tuple[tuple[str, int], ...]  # (path in the repository, bytes)
    warnings: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def prepare(ckpt: Checkpoint, repo_id: str) -> Upload:
    """What `ft push` would upload; checks the repository name. Reads only."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise UserError(f"{repo_id!r} is not a Hub repository id: write OWNER/NAME, e.g. my-org/llama-squad-lora")
    links = _links(ckpt.path)
    if links:
        shown = ", ".join(f"{p.relative_to(ckpt.path)} → {os.readlink(p)}" for p in links[:5])
        raise UserError(f"{ckpt.path} holds symbolic links ({shown}): ft push uploads only files the checkpoint "
                        "itself holds, never what a link points at",
                        hint=f"copy the folder without links (cp -rL {ckpt.path} NEW) and push that")
    files = tuple((str(p.relative_to(ckpt.path)), p.stat().st_size) for p in model_files(ckpt.path))
    warnings = []
    base = ckpt.base
    if ckpt.is_lora and isinstance(base, str) and Path(base).is_absolute():
        warnings.append(f"adapter_config.json names a local base model ({base}); people loading the adapter "
                        "from the Hub need that base too")
    return Upload(ckpt.path, repo_id, files, tuple(warnings))


def _links(folder: Path) -> list[Path]:
    """Symbolic links inside `folder` (not followed), the resume state's excepted (never uploaded)."""
    found = []
    for where, dirs, files in os.walk(folder):
        here = Path(where)
        if here == folder:
            dirs[:] = [d for d in dirs if d != TRAINING_STATE]
        found += [here / name for name in dirs + files if (here / name).is_symlink()]
    return sorted(found)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def push(upload: Upload, private: bool = False) -> str:
    """Create the repository (if new) and upload the files in one commit; return its URL."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise UserError("HF_TOKEN is not set: ft push reads the token from the environment only",
                        hint="export HF_TOKEN=hf_... (a write token from https://huggingface.co/settings/tokens)")
    try:
        from huggingface_hub import HfApi, constants
    except ImportError:
        from ftcore import contract

        raise contract.missing_extra("hub", "ft push") from None
    if constants.HF_HUB_OFFLINE:
        raise UserError("HF_HUB_OFFLINE is set: ft push needs the network (unset HF_HUB_OFFLINE)")
    api = HfApi(token=token)
    try:
        api.create_repo(upload.repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=upload.repo_id, folder_path=str(upload.folder), repo_type="model",
            ignore_patterns=[f"{TRAINING_STATE}/**"],
            commit_message=f"Upload {upload.folder.name} with ft",
        )
    except Exception as err:  # the network seam: every failure here is the user's to see, not a bug
        raise UserError(f"upload to {constants.ENDPOINT}/{upload.repo_id} failed: {type(err).__name__}: {err}",
                        hint="nothing was changed locally; check the network, HF_ENDPOINT and the token's rights") from None
    return str(getattr(commit, "commit_url", None) or f"{constants.ENDPOINT}/{upload.repo_id}")
