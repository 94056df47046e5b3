"""The container-runtime seam: one small interface that each way of running the trainer implements.

    from launcher import runtime
    rt = runtime.get(job.container.runtime)   # names: ftcore/runtimes.py
    rt.launch(job, binds, image, env_names, workdir)  # the words before `python -m trainer`
    rt.image_to_run(job.container); rt.pull_argv(uri, out); rt.check_argv(container, image, python)

`render.py`, `image.py`, `submit.py`, `local.py` and the CLI ask the job's runtime and never test
its name. A runtime either wraps the command (`apptainer exec ... IMAGE`) or hands srun its
options (Pyxis's `--container-image`); it says which host paths it shows at the same place
without being asked (what ft need not bind), how an image reference becomes what its tasks run
(a URI's cached file), how it pulls one into the image cache, and how `ft image check` runs a
probe inside it. A new runtime is one module with a `Runtime` subclass and one line in
`ftcore/runtimes.py`.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ftcore import runtimes
from ftcore.errors import UserError
from launcher import paths

if TYPE_CHECKING:
    from ftcore.schema import ContainerConfig, Job

# Stands for the job's id in a launch word; the script writes "$SLURM_JOB_ID" there.
JOB_ID = "@SLURM_JOB_ID@"


class Runtime:
    """One container runtime. Class attributes say what it is; methods say what it renders."""

    name: ClassVar[str]
    # The tool on this machine's PATH that pulls and checks images (None: nothing to call).
    program: ClassVar[str | None] = None
    # The trainer runs inside an image (False: the host's Python, container.python).
    contained: ClassVar[bool] = True
    # Image references the runtime fetches from a registry (a local file otherwise).
    uri_prefixes: ClassVar[tuple[str, ...]] = ()
    # The suffix of the file `ft image pull` keeps in the image cache.
    suffix: ClassVar[str] = ""
    # The tasks fetch a URI image themselves when it was not pulled before (each node, at start).
    imports_at_start: ClassVar[bool] = False
    # `ft image` uses it, when its program is on PATH, where no runtime is named.
    discovered: ClassVar[bool] = False

    def here(self) -> str | None:
        """The runtime's program on this machine's PATH, or None."""
        return shutil.which(self.program) if self.program else None

    def default_binds(self, home: str) -> tuple[str, ...]:
        """Host folders the runtime shows at the same path without being asked: ft binds
        what the job needs and these do not already show."""
        return ()

    def is_uri(self, image: str) -> bool:
        return image.startswith(self.uri_prefixes)

    def cached_name(self, uri: str) -> str:
        """`docker://nvcr.io/nvidia/nemo:25.07` → `nemo_25.07-<hash><suffix>`: readable, unique per URI."""
        last = uri.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", last.replace(":", "_").replace("@", "_"))[:60]
        return f"{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}{self.suffix}"

    def cached(self, container: "ContainerConfig") -> Path:
        """Where `ft image pull` keeps the job's URI image."""
        return cache_dir(container) / self.cached_name(str(container.image))

    def image_to_run(self, container: "ContainerConfig") -> str:
        """The image the job's tasks run: a local path as given, a URI's cached file."""
        image = str(container.image)
        return str(self.cached(container)) if self.is_uri(image) else image

    def needs_pull(self, container: "ContainerConfig") -> bool:
        """The tasks cannot run the image as named until `ft image pull` (or `ft submit`) cached it."""
        return self.is_uri(str(container.image)) and not self.cached(container).is_file()

    def image_problem(self, container: "ContainerConfig") -> str | None:
        """Why the image named cannot be run (a local file that is not there); None: it may."""
        return None

    def mount_problems(self, binds: list[str]) -> list[str]:
        """Binds the runtime cannot express."""
        return []

    def launch(self, job: "Job", binds: list[str], image: str, env_names: tuple[str, ...] = (),
               workdir: str | None = None) -> list[list[str]]:
        """The words before `python -m trainer`, in readable groups: a wrapper command
        (`apptainer exec ... IMAGE`), or srun's own options; [] to run on the host.
        `env_names`: the variables the script exports for the trainer, which must win over
        the image's own values; `workdir`: the folder the task starts in."""
        raise NotImplementedError

    def pull_argv(self, uri: str, out: Path) -> list[str]:
        """The command that writes the image `uri` into the file `out`."""
        raise UserError(f"container.runtime={self.name} pulls no images", hint="give a local image path")

    def check_argv(self, container: "ContainerConfig", image: str, python: str, probe: list[str],
                   wait_for_allocation: bool) -> list[str] | None:
        """The command that runs `probe` (python -m ftcore.contract, with ft's code bound in as
        a job gets it) inside `image` from this machine; None where it cannot be run from here
        (with `wait_for_allocation` False: only what answers at once)."""
        return None

    def local_problem(self) -> str | None:
        """Why the local executor cannot run this runtime's jobs here (None: it can)."""
        return None if self.here() or not self.program else (
            f"{self.program} is not on PATH here: run with container.runtime=none to use this machine's Python")


def cache_dir(container: "ContainerConfig") -> Path:
    """The image cache: container.cache_dir, else $FT_HOME/images (the compute nodes see it)."""
    return Path(container.cache_dir).expanduser() if container.cache_dir else paths.ft_home() / "images"


def get(name: str) -> Runtime:
    """The runtime called `name` (`container.runtime`), or a UserError listing the valid names."""
    entry = runtimes.RUNTIMES.get(name)
    if entry is None:
        raise UserError(f"unknown container runtime {name!r}: choose {', '.join(runtimes.names())}")
    module, _, cls = entry.target.partition(":")
    return getattr(importlib.import_module(module), cls)()


def discovered() -> tuple[str, ...]:
    """The runtimes `ft image` looks for on PATH when none is named, in the registry's order."""
    return tuple(name for name in runtimes.names() if get(name).discovered)


def of(container: "ContainerConfig") -> Runtime:
    return get(container.runtime)
