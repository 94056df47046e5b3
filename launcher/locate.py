"""What a CKPT argument names: a checkpoint folder, or the newest checkpoint of a job.

    ft merge 12345            # job id: its newest complete checkpoint
    ft merge 2026112          # a unique prefix of a job id or folder name
    ft merge ~/ft/jobs/…      # a job folder (or one sweep task's folder, tasks/N)
    ft merge …/checkpoints/step-000040     # one checkpoint (or any model folder)

A checkpoint that holds only the distributed training state (every one but a run's final)
gets its Hugging Face files first, from that state (`fttools.hf_files`, passed in by the
CLI as `make_hf_files`: the launcher itself never imports torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ftcore.files import expand
from ftcore import layout
from ftcore.errors import UserError
from ftcore.layout import Checkpoint
from launcher import jobs


def find_checkpoint(spec: str, root: Path | None = None,
                    make_hf_files: Callable[[Path], None] | None = None) -> Checkpoint:
    """A checkpoint folder, or the newest complete checkpoint of the job that `spec` names."""
    candidate = expand(spec)
    if candidate.is_dir():
        if layout.is_complete(candidate):
            return _loadable(candidate, make_hf_files)
        found = Checkpoint.at(candidate)
        if found is not None:
            return found
        if candidate.name == layout.CHECKPOINTS and (candidate.parent / layout.CONFIG).is_file():
            candidate = candidate.parent
        if not (candidate / layout.CONFIG).is_file():
            raise UserError(f"{candidate} is neither a checkpoint (adapter_config.json, or config.json with "
                            "weights) nor a job folder (config.yaml)")
    view = jobs.find(str(candidate) if candidate.is_dir() else spec, root)
    runs = view.run_dirs
    if len(runs) > 1:
        listing = ", ".join(str(r) for r in runs[:4])
        raise UserError(f"{view.folder.name} is a sweep of {len(runs)} runs: name one of them ({listing}, ...)")
    run = runs[0]
    folder = layout.newest_complete(run)
    if folder is None:
        raise UserError(f"job {view.job_id or run.name} has no complete checkpoint yet ({run / layout.CHECKPOINTS})",
                        hint=f"`ft status {view.job_id or run}` shows how far it got")
    return _loadable(folder, make_hf_files)


def _loadable(folder: Path, make_hf_files: Callable[[Path], None] | None) -> Checkpoint:
    if layout.kind_of(folder) is None and make_hf_files is not None:
        make_hf_files(folder)
    found = Checkpoint.at(folder)
    if found is None:
        raise UserError(f"{folder} holds no model files, only ft's training state",
                        hint="ft merge/generate/eval/export make them from that state")
    return found
