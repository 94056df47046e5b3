"""Apptainer and Singularity: the trainer's command wrapped in `apptainer exec`.

    srun apptainer exec --nv --bind SRC[:DST[:ro]] ... --env PYTHONPATH=/opt/ft IMAGE.sif python -m trainer ...

A URI image (docker://, oras://, library://) is converted to one SIF by `apptainer pull` on the
login node, into the image cache; the tasks run that SIF. `singularity` is the same runtime
under its older name (the program on PATH differs).
"""

from __future__ import annotations

from pathlib import Path

from ftcore import contract
from launcher.runtime import Runtime

# Where Apptainer's default configuration binds host folders at the same path: $HOME,
# /tmp, /var/tmp, /proc, /sys, /dev (apptainer.conf "mount home/tmp/proc/sys/dev"). It
# binds the working directory too, but ft does not count on it: `sbatch job.sbatch` may be
# run again from anywhere.
SYSTEM_BINDS = ("/tmp", "/var/tmp", "/proc", "/sys", "/dev")


class Apptainer(Runtime):
    name = "apptainer"
    program = "apptainer"
    # Transports `apptainer pull` converts to a SIF.
    uri_prefixes = ("docker://", "docker-daemon://", "oras://", "library://", "shub://", "https://", "http://")
    suffix = ".sif"
    discovered = True

    def default_binds(self, home: str) -> tuple[str, ...]:
        return (home, *SYSTEM_BINDS)

    def image_problem(self, container) -> str | None:
        from ftcore.files import expand

        image = str(container.image)
        if not self.is_uri(image) and not expand(image).exists():
            return f"container.image {image} does not exist (give a .sif path or a docker:// URI)"
        return None

    def launch(self, job, binds, image, env_names=(), workdir=None):
        groups = [[self.program, "exec", *(["--nv"] if job.container.nv else [])]]
        groups += [["--bind", bind] for bind in binds]
        if job.container.mount_ft:
            groups.append(["--env", f"PYTHONPATH={contract.MOUNT_POINT}"])
        return [*groups, [image]]

    def pull_argv(self, uri: str, out: Path) -> list[str]:
        return [self.program, "pull", str(out), uri]

    def check_argv(self, container, image, python, probe, wait_for_allocation):
        if not self.here():
            return None
        argv = [self.program, "exec", *(["--nv"] if container.nv else [])]
        if container.mount_ft:
            from launcher import paths

            argv += ["--bind", f"{paths.package_dir('ftcore')}:{contract.MOUNT_POINT}/ftcore:ro",
                     "--env", f"PYTHONPATH={contract.MOUNT_POINT}"]
        return [*argv, image, python, *probe]


class Singularity(Apptainer):
    name = "singularity"
    program = "singularity"
