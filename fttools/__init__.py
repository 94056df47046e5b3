"""ft's model tools: the after-training commands that load a model (merge, generate, eval, export).

They import torch, transformers, peft and the trainer's own loading code, so the CLI reaches
them lazily, only when such a command runs (`ft --help` and `ft submit` never load them).
Importing this package itself imports nothing heavy. `fttools.tiny` holds the tiny model ft
ships, a job around it and an in-process run: the tests and the benches build on it.

    launcher (cli) ··lazy··▶ fttools ──▶ trainer ──▶ ftcore
"""

from __future__ import annotations


def require_stack() -> None:
    """Import what loading a model needs, or say how to get it; quiet the libraries' chatter."""
    import importlib
    import warnings

    from ftcore.contract import install_line
    from ftcore.errors import UserError
    from trainer import quiet_import_noise

    quiet_import_noise()
    try:
        for name in ("torch", "peft"):
            importlib.import_module(name)
        import transformers
    except ImportError as err:
        raise UserError(f"this command loads the model, which needs torch, transformers and peft ({err})",
                        hint=f"{install_line('train')}, or run it inside the training container") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def source_stamp(ckpt, kind: str, **settings) -> dict:
    """What a merge or export is made from: the checkpoint, its model files (size and time),
    the settings. A re-run that finds this stamp in its output folder has nothing to do."""
    from pathlib import Path

    from ftcore.layout import model_files

    files = []
    for path in model_files(ckpt.path):
        info = path.stat()
        files.append([str(path.relative_to(ckpt.path)), info.st_size, info.st_mtime_ns])
    return {"kind": kind, "checkpoint": str(Path(ckpt.path).absolute()), "files": sorted(files), **settings}
