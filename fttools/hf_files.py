"""Hugging Face files for a checkpoint that holds only the distributed training state.

Intermediate checkpoints (and the one a preempted job writes) keep ``ft_state/dcp`` only:
gathering a full copy on rank 0 every time would stall all ranks. The first after-training
command that needs the model (`ft merge/generate/eval/export/push`) makes the files here, on
the CPU, from the job's own config: exactly what the trainer writes into its final checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ftcore import layout
from ftcore.errors import UserError
from ftcore.schema import load_job


def write_hf_files(folder: Path) -> None:
    """Add the adapter or model files to checkpoint `folder` (the marker file is moved in last)."""
    from trainer.checkpointing import write_hf_from_state
    from trainer.checkpointing import base_reference

    run = layout.owning_run(folder.resolve())
    if run is None:
        raise UserError(f"{folder} holds only ft's training state and no job folder around it "
                        f"({layout.CONFIG} two levels up): the model cannot be rebuilt without the job's config")
    job = load_job(run / layout.CONFIG)
    _, base_ref = base_reference(job, run)
    tmp = folder / ".tmp-hf"
    shutil.rmtree(tmp, ignore_errors=True)
    write_hf_from_state(folder, job, base_ref, tmp)
    markers = {"config.json", layout.ADAPTER_CONFIG}  # what `layout.kind_of` looks for
    names = sorted(os.listdir(tmp), key=lambda n: n in markers)
    for name in names:
        os.replace(tmp / name, folder / name)
    tmp.rmdir()
