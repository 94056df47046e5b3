"""The container runtimes a job may name (`container.runtime`): one registry.

    apptainer, singularity   `srun apptainer exec --nv --bind ... IMAGE python -m trainer`
    pyxis                    `srun --container-image=IMAGE --container-mounts=... python -m trainer`
    none                     `srun python -m trainer` with the host's Python (slurm.setup prepares it)

Each name maps to the launcher class that renders, pulls and checks for it (launcher/runtime.py
is the interface, one module per runtime). The schema reads the names here; nothing else in ft
tests a runtime's name. A new runtime is one launcher module and one line in RUNTIMES.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Entry(NamedTuple):
    target: str  # "module:Class", imported only when a job names the runtime
    image: bool = True  # the job runs in an image (container.image is required)


RUNTIMES: dict[str, Entry] = {
    "apptainer": Entry("launcher.apptainer:Apptainer"),
    "singularity": Entry("launcher.apptainer:Singularity"),
    "pyxis": Entry("launcher.pyxis:Pyxis"),
    "none": Entry("launcher.bare:Bare", image=False),
}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


def names() -> tuple[str, ...]:
    return tuple(RUNTIMES)


def register(name: str, target: str, image: bool = True) -> None:
    """Add a runtime from a site's plugin (`"podman-hpc", "ft_podman:PodmanHpc"`)."""
    if not _NAME.match(name):
        raise ValueError(f"runtime name {name!r}: lower-case letters, digits, - and _")
    RUNTIMES[name] = Entry(target, image)
