"""What a CKPT argument names: a checkpoint folder, or the newest checkpoint of a job.

    ft merge 12345            # job id: its newest complete checkpoint
    ft merge 2026112          # a unique prefix of a job id or folder name
    ft merge ~/ft/jobs/…      # a job folder (or one sweep task's folder, tasks/N)
    ft merge …/checkpoints/step-000040     # one checkpoint (or any model folder)
    ft merge $(ft best 12345)  # the kept checkpoint with the lowest validation loss

A checkpoint that holds only the distributed training state (every one but a run's final)
gets its Hugging Face files first, from that state (`fttools.hf_files`, passed in by the
CLI as `make_hf_files`: the launcher itself never imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ftcore.files import expand
from ftcore import layout
from ftcore.errors import UserError
from ftcore.layout import Checkpoint
from launcher import jobs


@dataclass(frozen=True)
class Best:
    folder: Path
    step: int
    val_loss: float
    note: str | None = None  # a lower validation loss whose checkpoint is gone


def best_checkpoint(spec: str, root: Path | None = None) -> Best:
    """The kept checkpoint with the lowest validation loss at its step (metrics.jsonl), of the
    job `spec` names (one run: a job, or one sweep task `15_1`)."""
    from launcher.plot import read_metrics

    run = _one_run(spec, root)
    losses = dict(read_metrics(run / layout.METRICS).get("val_loss", [])) if (run / layout.METRICS).is_file() else {}
    kept = {step: folder for step, folder in layout.complete_checkpoints(run / layout.CHECKPOINTS)}
    scored = [(losses[step], step) for step in kept if step in losses]
    if not scored:
        raise UserError(f"no checkpoint of {run} has a validation loss at its step ({len(kept)} checkpoint(s), "
                        f"{len(losses)} validation(s))",
                        hint="validate where you checkpoint: trainer.val_every_steps equal to checkpoint.every_steps "
                             "(or a divisor of it)")
    val_loss, step = min(scored)
    note = None
    if losses and min(losses.values()) < val_loss:
        lowest = min(losses, key=losses.get)
        note = (f"the lowest validation loss, {losses[lowest]:.4f} at step {lowest}, has no checkpoint kept "
                "(checkpoint.every_steps, checkpoint.keep_last)")
    return Best(kept[step], step, val_loss, note)


def _one_run(spec: str, root: Path | None) -> Path:
    candidate = expand(spec)
    if candidate.is_dir() and candidate.name == layout.CHECKPOINTS:
        candidate = candidate.parent
    view = jobs.find(str(candidate) if candidate.is_dir() else spec, root)
    runs = view.run_dirs
    if len(runs) > 1:
        listing = ", ".join(f"{view.label}_{r.name}" for r in runs[:4])
        raise UserError(f"{view.folder.name} is a sweep of {len(runs)} runs: name one of them ({listing}, ...)")
    return runs[0]


def find_checkpoint(spec: str, root: Path | None = None,
                    make_hf_files: Callable[[Path], None] | None = None) -> Checkpoint:
    """A checkpoint folder, or the newest complete checkpoint of the job that `spec` names."""
    folder = checkpoint_folder(spec, root)
    found = Checkpoint.at(folder) if not layout.is_complete(folder) else None
    return found or _loadable(folder, make_hf_files)


def checkpoint_folder(spec: str, root: Path | None = None) -> Path:
    """What find_checkpoint loads, without loading it: a complete checkpoint may hold only the
    training state (a job that runs elsewhere makes its model files there)."""
    candidate = expand(spec)
    if candidate.is_dir():
        if layout.is_complete(candidate) or Checkpoint.at(candidate) is not None:
            return candidate.resolve()
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
    return folder


def _loadable(folder: Path, make_hf_files: Callable[[Path], None] | None) -> Checkpoint:
    if layout.kind_of(folder) is None and make_hf_files is not None:
        make_hf_files(folder)
    found = Checkpoint.at(folder)
    if found is None:
        raise UserError(f"{folder} holds no model files, only ft's training state",
                        hint="ft merge/generate/eval/export make them from that state")
    return found
