"""Pyxis (NVIDIA's SPANK plugin for SLURM) with enroot: srun itself runs each task in the image.

    srun --kill-on-bad-exit=1 --label --container-image=/shared/ft/images/pytorch_25.01-py3-<hash>.sqsh \\
        --container-mounts=/home/me/ft/jobs/J,/data/train.jsonl:/data/train.jsonl:ro,... \\
        --container-workdir=/home/me/ft/jobs/J --container-name=ft-"${SLURM_JOB_ID:?}" \\
        --container-mount-home --container-env=HF_HUB_CACHE \\
        env PYTHONPATH=/opt/ft python -m trainer --config "$FT_CONFIG"

The option names are Pyxis's own (its README and args.c): no `exec` wrapper, the options go
on the one srun line. What ft decides, and why:
* Mounts: enroot shows no host folder by default (its /tmp is a tmpfs), so every path the job
  needs is mounted explicitly, at the same path, exactly as the Apptainer path binds what
  Apptainer does not show; `ro` where the job only reads.
* `--container-mount-home`: the user's home, as Apptainer shows it (caches under ~ work); the
  job's own paths are mounted explicitly anyway, so a site that remaps root (home at /root)
  still sees them in place.
* `--container-env=NAMES`: the variables the script exports for the trainer win over the
  image's own values (Pyxis's default lets the image's win). PYTHONPATH for ft's mounted
  code is set on the command (`env PYTHONPATH=...`), as Apptainer's `--env` sets it.
* `--container-workdir`: the job folder (enroot would start in the image's WORKDIR).
* `--container-name=ft-<job id>`: later steps of the same job, and the same job requeued on the
  same node, reuse the container instead of importing again (outside a job the line refuses
  to run rather than share one name between images). Pyxis removes it at the job's end
  where the site sets `container_scope=job`; with the default global scope `enroot remove`
  cleans nodes.
* The image: a local squashfs file (`.sqsh`) as its absolute path; a docker reference in
  enroot's form (`docker://nvcr.io/nvidia/pytorch:25.01-py3` → `nvcr.io#nvidia/pytorch:25.01-py3`),
  or the `.sqsh` that `ft image pull --runtime pyxis` (`enroot import`) left in the image cache.
* GPUs: no flag; enroot's NVIDIA hook exposes the GPUs SLURM allocated (container.nv is Apptainer's).
* Registry credentials stay enroot's (`~/.config/enroot/.credentials`, netrc format): ft never
  reads or writes them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ftcore import contract
from launcher.runtime import JOB_ID, Runtime
from launcher.slurm import Slurm

DOCKER = "docker://"
DOCKERD = "dockerd://"
SQUASHFS_SUFFIXES = (".sqsh", ".squashfs")
SQUASHFS_MAGIC = b"hsqs"


def is_local(image: str) -> bool:
    """A squashfs file rather than a registry reference (Pyxis takes a path from `/` or `.`)."""
    return image.startswith(("/", ".", "~")) or image.endswith(SQUASHFS_SUFFIXES)


def enroot_reference(image: str) -> str:
    """A docker reference in enroot's form, `[USER@][REGISTRY#]IMAGE[:TAG]`:
    `docker://nvcr.io/nvidia/pytorch:25.01-py3` → `nvcr.io#nvidia/pytorch:25.01-py3`; a Docker
    Hub name (`docker://pytorch/pytorch:2.5`) stays as it is (enroot's default registry);
    `dockerd://` (the local Docker daemon) and a reference already in enroot's form are kept."""
    if image.startswith(DOCKERD) or "#" in image:
        return image.removeprefix(DOCKER)
    ref = image.removeprefix(DOCKER)
    first, slash, rest = ref.partition("/")
    user, at, host = first.rpartition("@")
    if slash and ("." in host or ":" in host or host == "localhost"):
        return f"{user}{at}{host}#{rest}"
    return ref


class Pyxis(Runtime):
    name = "pyxis"
    program = "enroot"  # on the login node: `enroot import` pulls, `enroot start` checks
    uri_prefixes = (DOCKER, DOCKERD)
    suffix = ".sqsh"
    imports_at_start = True  # Pyxis imports a registry image on each node when no .sqsh is given

    def is_uri(self, image: str) -> bool:
        return not is_local(image) and "://" not in image.removeprefix(DOCKER).removeprefix(DOCKERD)

    def cached_name(self, uri: str) -> str:
        return super().cached_name(enroot_reference(uri))  # both spellings of a reference: one file

    def image_to_run(self, container) -> str:
        image = str(container.image)
        if not self.is_uri(image):
            return str(Path(image).expanduser().absolute())  # Pyxis reads a path only from `/` or `.`
        cached = self.cached(container)
        return str(cached) if cached.is_file() else enroot_reference(image)

    def image_problem(self, container) -> str | None:
        image = str(container.image)
        if self.is_uri(image):
            return None
        if "://" in image:
            return (f"container.image {image}: Pyxis imports docker images (docker://REGISTRY/IMAGE:TAG, "
                    "enroot's REGISTRY#IMAGE:TAG) or runs a squashfs file (.sqsh), not this transport")
        path = Path(image).expanduser()
        if not path.exists():
            return f"container.image {image} does not exist (give a .sqsh path or a docker:// reference)"
        try:
            with open(path, "rb") as handle:
                magic = handle.read(4)
        except OSError:
            return None  # unreadable here: the nodes may read it
        if magic != SQUASHFS_MAGIC:
            return (f"container.image {image} is not a squashfs file: Pyxis runs images that "
                    f"`enroot import` makes (`ft image pull docker://... --runtime pyxis`)")
        return None

    def mount_problems(self, binds: list[str]) -> list[str]:
        return [f"the path in {bind} holds a comma, which --container-mounts reads as the end of an "
                "entry: move it, or mount a folder above it" for bind in binds if "," in bind]

    def launch(self, job, binds, image, env_names=(), workdir=None):
        groups = [[f"--container-image={image}"]]
        if binds:
            groups.append([f"--container-mounts={','.join(_mount(bind) for bind in binds)}"])
        if workdir:
            groups.append([f"--container-workdir={os.path.abspath(workdir)}"])
        groups.append([f"--container-name=ft-{JOB_ID}", "--container-mount-home"])
        if env_names:
            groups.append([f"--container-env={','.join(env_names)}"])
        if job.container.mount_ft:
            groups.append(["env", f"PYTHONPATH={contract.MOUNT_POINT}"])
        return groups

    def pull_argv(self, uri: str, out: Path) -> list[str]:
        ref = enroot_reference(uri)
        return ["enroot", "import", "--output", str(out), ref if ref.startswith(DOCKERD) else DOCKER + ref]

    def check_argv(self, container, image, python, probe, wait_for_allocation):
        from launcher import paths

        ftcore = f"{paths.package_dir('ftcore')}:{contract.MOUNT_POINT}/ftcore"
        command = (["env", f"PYTHONPATH={contract.MOUNT_POINT}"] if container.mount_ft else []) + [python, *probe]
        if self.here() and not self.is_uri(image):
            mounts = ["--mount", f"{ftcore}:none:x-create=dir,bind,ro"] if container.mount_ft else []
            return ["enroot", "start", *mounts, image, *command]
        srun = Slurm.task_command  # Pyxis is a plugin of SLURM's task launcher
        if wait_for_allocation and shutil.which(srun):
            mounts = [f"--container-mounts={ftcore}:ro"] if container.mount_ft else []
            return [srun, "--nodes=1", "--ntasks=1", f"--container-image={image}", *mounts, *command]
        return None

    def local_problem(self) -> str | None:
        return ("container.runtime=pyxis runs tasks through srun's --container-image on a SLURM cluster: "
                "the local executor cannot (use --executor slurm, or container.runtime=none here)")


def _mount(bind: str) -> str:
    """ft's bind `src[:dst[:opts]]` as a --container-mounts entry `SRC:DST[:FLAGS]` (flags joined by `+`)."""
    parts = bind.split(":")
    src = os.path.expanduser(parts[0])
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    flags = parts[2].replace(",", "+") if len(parts) > 2 else ""
    return f"{src}:{dst}:{flags}" if flags else (src if dst == src else f"{src}:{dst}")
