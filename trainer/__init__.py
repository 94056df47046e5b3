"""ft's trainer: what runs inside the container on every SLURM task.

    python -m trainer --config JOB_DIR/config.yaml

Reads the job the launcher resolved (``launcher.schema.Job``), trains LoRA (data parallel)
or full SFT (FSDP2) and writes checkpoints, ``metrics.jsonl`` and logs into the job folder.
In-process: ``trainer.train.run(job, job_dir)``. Importing this package imports no torch.
"""

EXIT_OK = 0
EXIT_CONFIG = 2
# "Stopped early on purpose, checkpoint written: requeue me." BSD's EX_TEMPFAIL.
EXIT_REQUEUE = 75


class ConfigError(ValueError):
    """A problem with the job or its data that the user must fix; shown without a traceback."""
