"""Bare metal (`container.runtime=none`): the trainer runs with the host's Python.

    srun python -m trainer --config ...

The Python is container.python, else the one ft runs with; a cluster without containers
prepares it with `slurm.setup` lines (`module load cuda/12.4`, `source ~/venvs/ft/bin/activate`)
that the script runs before srun. `ft submit` asks that Python what it has of the image
contract before anything is written (submit.host_python_problems).
"""

from __future__ import annotations

from launcher.runtime import Runtime


class Bare(Runtime):
    name = "none"
    contained = False

    def launch(self, job, binds, image, env_names=(), workdir=None):
        return []
