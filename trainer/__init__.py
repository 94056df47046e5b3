"""ft's trainer: what runs inside the container on every SLURM task.

    python -m trainer --config JOB_DIR/config.yaml

Reads the job the launcher resolved (``ftcore.schema.Job``), trains LoRA (data parallel)
or full SFT (FSDP2) and writes checkpoints, ``metrics.jsonl`` and logs into the job folder.
In-process: ``trainer.train.run(job, job_dir)`` (the run; ``train_step`` is one optimizer step).
Imports only ``ftcore`` of ft's packages (docs/architecture.md);
importing this package imports no torch.
"""

# Loggers that speak while torch, peft and torchao are imported and say nothing about the run:
# torchao's CUDA-only kernels failing to load on a CPU build, torch's notes to library authors.
IMPORT_NOISE = ("torchao", "torch.utils._pytree")


def quiet_import_noise() -> None:
    """Raise those loggers to ERROR; call before the first heavy import (standard library only)."""
    import logging

    for name in IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)
