"""Container images on the login node: pulled once, checked once.

    ft image check IMAGE [--runtime pyxis]   # Python, torch, CUDA and the contract's packages inside IMAGE
    ft image pull URI [--runtime pyxis]      # docker:// → one SIF (Apptainer) or .sqsh (enroot) in the image cache

A URI image is converted to one file once, here on the login node, into `container.cache_dir`
(default $FT_HOME/images, which compute nodes see like the job folders) by the job's runtime
(`apptainer pull`, `enroot import`; launcher/runtime.py): under a lock, into a temporary name
renamed into place, so two pulls at once give one complete image and a failed pull leaves no
file. `ft submit` pulls a URI image before it writes anything and renders the cached file's
path, so no srun task pulls. It then runs the image check once per image (remembered by
path, size and modification time under $FT_HOME) and refuses an image that cannot run the
trainer. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ftcore import contract
from ftcore.errors import UserError
from launcher import paths, runtime, sharedcache

CHECK_TIMEOUT_S = 600


cache_dir = runtime.cache_dir


def image_to_run(container) -> str:
    """The image the job's tasks run: a local path as given, a URI's cached file."""
    return runtime.of(container).image_to_run(container)


def find_runtime(preferred: str | None = None) -> str | None:
    """The runtime to use here: `preferred` where its program is on PATH, else the first runtime
    found on PATH that `ft image` looks for unasked (apptainer, singularity); None: none here."""
    for name in ([preferred] if preferred else runtime.discovered()):
        if runtime.get(name).here():
            return name
    return None


# ---------------------------------------------------------------- pull

def pull(uri: str, folder: Path, runtime_name: str, echo=None) -> tuple[Path, bool]:
    """The image file for `uri` in `folder`, pulled if absent: (path, pulled now?).

    Under an exclusive lock per image: a second pull of the same URI waits and then finds
    the file. The runtime writes a temporary name that is renamed into place only once it
    succeeded, so the image's name never shows a partial file."""
    rt = runtime.get(runtime_name)
    if not rt.is_uri(uri):
        raise UserError(f"{uri} is not an image URI ({', '.join(rt.uri_prefixes) or 'none'}): nothing to pull")
    if not rt.here():
        raise UserError(f"pulling {uri} needs {rt.program}, which is not on PATH here",
                        hint=f"run `ft image pull` where {rt.program} is installed (the login node, or a "
                             f"compute node: the cache folder is shared), or give a local image path")
    sharedcache.make_dir(folder)
    final = folder / rt.cached_name(uri)
    with sharedcache.lock(folder / f".{final.name}.lock"):
        if final.is_file():
            return final, False
        for stale in folder.glob(f".{final.name}.partial-*"):  # a killed pull's leftovers; we hold the lock
            with contextlib.suppress(PermissionError):  # another user's: not ours to remove
                stale.unlink(missing_ok=True)
        partial = folder / f".{final.name}.partial-{os.getpid()}"
        try:
            argv = rt.pull_argv(uri, partial)
            code, said = _stream(argv, echo)
            if code != 0 or not partial.is_file():
                raise UserError(f"{' '.join(argv[:2])} {uri} failed (exit {code}); no image was kept",
                                *[line for line in said if line.strip()][-15:],
                                hint="nothing was submitted")
            # What was pulled, so that a job can tell later that this is still it.
            sharedcache.record_digest(final, sharedcache.sha256_of(partial))
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
    return final, True


def trust_problem(container, sif: Path) -> str | None:
    """Why an image in the image cache must not run (None: it may): another owner than you, root
    or container.trusted_owners, for the file or its recorded digest; or a changed file."""
    problem = sharedcache.untrusted([sif, sharedcache.digest_path(sif)], container.trusted_owners,
                                    "container.trusted_owners")
    return problem or sharedcache.digest_problem(sif)


def check_trusted(container, sif: Path) -> None:
    problem = trust_problem(container, sif)
    if problem:
        raise UserError(f"container.image {container.image}: the cached image is refused: {problem}",
                        hint="nothing was submitted")


def _stream(argv: list[str], echo) -> tuple[int, list[str]]:
    """Run argv, passing its stderr lines to `echo` as they come (pulls take minutes)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if echo:
            echo(line)
    return proc.wait(), lines


# ---------------------------------------------------------------- check

@dataclass(frozen=True)
class Report:
    image: str
    runtime: str
    found: dict  # contract.report() from inside the image

    @property
    def problems(self) -> list[str]:
        return contract.problems(self.found)

    def lines(self) -> list[str]:
        f = self.found
        out = [f"image: {self.image} ({self.runtime})",
               f"python {f['python']} ({f['executable']})" + ("" if f["python_ok"] else "  TOO OLD")]
        cuda = f.get("cuda")
        if cuda:
            build = f"CUDA {cuda['build']}" if cuda["build"] else "no CUDA (a CPU build)"
            out.append(f"torch {f['packages']['torch']['version']}: {build}; GPUs visible here: {cuda['devices']}")
        for module, entry in f["packages"].items():
            status = entry["version"] or ("missing" if entry["required"] else "-")
            kind = "" if entry["required"] else "  (optional)"
            out.append(f"  {entry['dist']:<16} {status:<14} needs >={entry['minimum']}{kind}")
        features = f.get("features") or {}
        if features:
            out.append("features the trainer calls:")
        for name, entry in features.items():
            status = "ok" if entry["ok"] else ("MISSING" if entry["required"] else "absent")
            detail = f" ({entry['detail']})" if entry["detail"] else ""
            out.append(f"  {status:<8} {name}: {entry['needed_for']}{detail}")
        lm_eval = contract.lm_eval_problem(f)
        out.append(f"lm-eval (`ft eval --tasks` in this image): {'no: ' + lm_eval if lm_eval else 'yes'}")
        return out


PROBE = ["-m", "ftcore.contract"]


def check_argv(container, image: str, python: str = "python", wait_for_allocation: bool = True) -> list[str] | None:
    """The runtime command that prints contract.report() from inside `image`: ft's packages
    bound in as a job gets them (container.mount_ft), else the image's own ftcore. None where
    the runtime cannot run it from here."""
    return runtime.of(container).check_argv(container, image, python, PROBE, wait_for_allocation)


def can_check_here(container) -> bool:
    """The image check answers here at once (no allocation to wait for)."""
    return check_argv(container, image_to_run(container), wait_for_allocation=False) is not None


def check(container, image: str | None = None) -> Report:
    """Run the contract's import check inside the image through the runtime."""
    image = image or image_to_run(container)
    argv = check_argv(container, image, container.python or "python")
    if argv is None:
        rt = runtime.of(container)
        raise UserError(f"the image check needs {rt.program}, which is not on PATH here",
                        hint="run it where the container runtime is installed")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"the image check did not finish within {CHECK_TIMEOUT_S} s: {' '.join(argv)}") from None
    last = proc.stdout.strip().splitlines()[-1:] or [""]
    try:
        found = json.loads(last[0])
    except ValueError:
        said = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()][-12:]
        raise UserError(f"could not run the image check in {image} (exit {proc.returncode})", *said,
                        hint=f"the command was: {' '.join(argv)}. The image needs a Python "
                             f"{'.'.join(map(str, contract.PYTHON_MIN))}+ named `{container.python or 'python'}` "
                             "on its PATH (container.python names another)") from None
    return Report(image, container.runtime, found)


def failure(report: Report) -> UserError:
    return UserError(f"image {report.image} cannot run ft's trainer:", *report.problems,
                     hint=f"use an image with these (a stock PyTorch + Hugging Face image), or build one "
                          f"FROM it that runs `{contract.pip_line()}`; the image contract is in "
                          "ftcore/contract.py and the README")


def _remembered_key(container, image: str) -> str | None:
    try:
        stat = os.stat(image)
    except OSError:
        return None
    key = json.dumps([os.path.abspath(image), stat.st_size, stat.st_mtime_ns, container.runtime,
                      container.python, container.mount_ft, [tuple(p) for p in contract.REQUIRED]])
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def checks_dir() -> Path:
    return paths.ft_home() / "image-checks"


def check_once(container, image: str) -> tuple[Report | None, bool]:
    """(report, ran now?): a passing check is remembered by image path, size and mtime, and
    not run again until the image changes. Raises UserError for an image that fails."""
    key = _remembered_key(container, image)
    memo = checks_dir() / f"{key}.json" if key else None
    if memo and memo.is_file():
        try:
            return Report(image, container.runtime, json.loads(memo.read_text())), False
        except ValueError:
            pass
    report = check(container, image)
    if report.problems:
        raise failure(report)
    if memo:
        from ftcore.files import write_atomic

        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(memo, json.dumps(report.found))
    return report, True


def echo_stderr(line: str) -> None:
    sys.stderr.write(line)
    sys.stderr.flush()
