"""ft's trainer: what runs inside the container on every SLURM task.

    python -m trainer --config JOB_DIR/config.yaml

Reads the job the launcher resolved (``ftcore.schema.Job``), trains LoRA (data parallel)
or full SFT (FSDP2) and writes checkpoints, ``metrics.jsonl`` and logs into the job folder.
In-process: ``trainer.train.run(job, job_dir)``. Imports only ``ftcore`` of ft's packages;
importing this package imports no torch.
"""
