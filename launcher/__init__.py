"""ft: launch LoRA and full SFT fine-tuning jobs on SLURM clusters inside containers.

The launcher runs on a login node and never imports torch; the trainer (``trainer/``)
runs inside the container; they meet only in the job folder (docs/architecture.md).
"""

__version__ = "0.1.0"
