"""The stock test image and the stand-in registry, for tests that run a container.

`stock_image` (session fixture) is the Apptainer sandbox directory that
scripts/make-test-image.sh builds (a Debian Python with exactly the image contract's
packages; cached under /var/cache/ft-test-image), or $FT_TEST_IMAGE when set;
`floor_image` the same at the contract's minimum versions (`--floors`, $FT_TEST_FLOOR_IMAGE). Where it
cannot be had (not root, no debootstrap) the tests that need it skip, and fail on CI.

`standin_registry(tmp_path, stock_image)` makes a stand-in registry folder serving the
stock image as `docker://ft-test/stock:latest` (tests/standin/singularity resolves
URIs there through $FT_STANDIN_REGISTRY).

`stock_squashfs` (session fixture) is the same image as enroot imports it: a squashfs file made
by Debian's mksquashfs, with the files `enroot import` writes (/etc/environment from the image's
ENV, /etc/rc with its WORKDIR); the Pyxis stand-in (tests/standin/pyxis) runs it. Made once,
beside the stock image.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAKE_IMAGE = REPO / "scripts" / "make-test-image.sh"
STANDIN = REPO / "tests" / "standin"
PYXIS_STANDIN = STANDIN / "pyxis"
STOCK_URI = "docker://ft-test/stock:latest"


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"stock test image unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"stock test image unavailable: {reason}")


def _image(variable: str, *flags: str) -> Path:
    given = os.environ.get(variable)
    command = " ".join([str(MAKE_IMAGE), *flags])
    if given:
        if not Path(given, "bin", "sh").exists():
            _unavailable(f"{variable}={given} is not a sandbox image folder")
        return Path(given)
    if os.geteuid() != 0:
        _unavailable(f"building it needs root: sudo bash {command}, then export {variable}=<printed path>")
    proc = subprocess.run(["bash", str(MAKE_IMAGE), *flags], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        _unavailable(f"{command} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def stock_image() -> Path:
    return _image("FT_TEST_IMAGE")


@pytest.fixture(scope="session")
def floor_image() -> Path:
    """The stock image with the contract's packages at exactly their minimums (torch aside:
    scripts/make-test-image.sh --floors says why); $FT_TEST_FLOOR_IMAGE when set."""
    return _image("FT_TEST_FLOOR_IMAGE", "--floors")


# What `enroot import` writes into an image's root (its docker config's Env, WorkingDir, no entrypoint).
ENROOT_ENVIRONMENT = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nLANG=C.UTF-8\n"
ENROOT_RC = """# enroot-provenance: docker://ft-test/stock:latest

mkdir -p "/" 2> /dev/null
cd "/" && unset OLDPWD || exit 1

if [ -s /etc/rc.local ]; then
    . /etc/rc.local
fi

if [ $# -gt 0 ]; then
    exec "$@"
else
    exec '/bin/sh'
fi
"""


def make_squashfs(rootfs: Path, out: Path) -> Path:
    """`out`: `rootfs` as enroot imports an image, squashed by mksquashfs (made under a lock,
    renamed into place; kept while the recipe is the same)."""
    import fcntl
    import shutil

    if out.is_file():
        return out
    if shutil.which("mksquashfs") is None:
        _unavailable("mksquashfs is not installed: apt-get install squashfs-tools")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():
            return out
        staging = out.parent / f".{out.name}.staging-{os.getpid()}"
        partial = out.parent / f".{out.name}.partial-{os.getpid()}"
        try:
            # Hard links: the image's files unchanged and uncopied; the two enroot files replaced.
            subprocess.run(["cp", "-al", str(rootfs), str(staging)], check=True, timeout=600)
            for name, text in (("environment", ENROOT_ENVIRONMENT), ("rc", ENROOT_RC)):
                (staging / "etc" / name).unlink(missing_ok=True)
                (staging / "etc" / name).write_text(text)
            proc = subprocess.run(["mksquashfs", str(staging), str(partial), "-noI", "-noD", "-noF", "-noX",
                                   "-no-progress", "-quiet"], capture_output=True, text=True, timeout=1200)
            if proc.returncode != 0:
                _unavailable(f"mksquashfs failed: {proc.stderr[-2000:]}")
            os.replace(partial, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            partial.unlink(missing_ok=True)
    return out


@pytest.fixture(scope="session")
def stock_squashfs(stock_image) -> Path:
    import hashlib

    key = hashlib.sha256((ENROOT_ENVIRONMENT + ENROOT_RC).encode()).hexdigest()[:12]
    return make_squashfs(stock_image, stock_image.parent / f"enroot-{key}.sqsh")


def standin_registry(folder: Path, image: Path) -> Path:
    """A registry folder serving `image` as STOCK_URI."""
    entry = folder / "ft-test" / "stock" / "latest"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.symlink_to(image)
    return folder


def build_sif(out: Path, sandbox: Path) -> Path:
    """A stand-in SIF for `sandbox`, written by the stand-in's own `build`."""
    proc = subprocess.run([str(STANDIN / "apptainer"), "build", str(out), str(sandbox)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return out


class ContainerSite:
    """A job's world outside every default bind: FT_HOME, a local model folder, data files,
    the image and a stand-in registry, all under /srv/ft-test-* (not $HOME, not /tmp), and an
    environment with the stand-in runtime first on PATH."""

    def __init__(self, root: Path, image: Path):
        from trainer_helpers import save_tiny_model

        shipped = REPO / "factories" / "data" / "tiny_qa.jsonl"
        self.root = root
        self.home = root / "ft-home"
        self.model = save_tiny_model(root / "models" / "tiny")
        (root / "data").mkdir()
        self.data = root / "data" / "train.jsonl"
        self.data.write_text(shipped.read_text())
        self.val = root / "data" / "val.jsonl"
        self.val.write_text("".join(shipped.read_text().splitlines(True)[:16]))
        self.registry = standin_registry(root / "registry", image)
        (root / "images").mkdir()
        self.image = build_sif(root / "images" / "stock.sif", image)
        self.log = root / "standin.jsonl"
        self.env = {"PATH": f"{STANDIN}{os.pathsep}{os.environ['PATH']}", "FT_HOME": str(self.home),
                    "FT_STANDIN_REGISTRY": str(self.registry), "FT_STANDIN_LOG": str(self.log)}

    def overrides(self, runtime: str = "apptainer", image: str | None = None) -> list[str]:
        """A container job that reads the local model and data files."""
        return [f"container.runtime={runtime}", f"container.image={image or self.image}", "container.nv=true",
                "model.init=pretrained", f"model.path={self.model}", f"data.path={self.data}",
                f"data.val_path={self.val}"]

    def calls(self, kind: str = "exec") -> list[dict]:
        import json

        lines = self.log.read_text().splitlines() if self.log.exists() else []
        records = [json.loads(line) for line in lines]
        return [r for r in records if r.get("ok") and (r.get("command") == [kind] if kind != "exec"
                                                        else "mounts" in r)]


def pyxis_env(squashfs: Path) -> dict:
    """The Pyxis stand-in's srun and enroot first on PATH (no Apptainer stand-in), its unsquashed
    images kept beside the stock squashfs so that each is extracted once per machine."""
    return {"PATH": f"{PYXIS_STANDIN}{os.pathsep}{os.environ['PATH']}",
            "FT_STANDIN_ENROOT_DATA": str(squashfs.parent / "enroot-data")}


@pytest.fixture
def pyxis_site(container_site, stock_squashfs) -> ContainerSite:
    """container_site for Pyxis: the stock squashfs also served by the stand-in registry as
    STOCK_URI, the Pyxis stand-in on PATH."""
    site = container_site
    (site.registry / "ft-test" / "stock" / "latest.sqsh").symlink_to(stock_squashfs)
    site.squashfs = stock_squashfs
    site.env = {**site.env, **pyxis_env(stock_squashfs)}
    return site


@contextmanager
def site_for(image: Path):
    """A ContainerSite around `image`, removed afterwards."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ft-test-", dir="/srv"))
    try:
        yield ContainerSite(root, image)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def container_site(stock_image, tmp_path, monkeypatch) -> ContainerSite:
    with site_for(stock_image) as site:
        monkeypatch.setenv("FT_HOME", str(site.home))  # `ft` runs and the test read the same jobs
        yield site


@pytest.fixture(scope="session")
def eval_image(stock_image) -> Path:
    """The stock image plus lm-eval (scripts/make-eval-image.sh, cached); $FT_TEST_EVAL_IMAGE when set."""
    given = os.environ.get("FT_TEST_EVAL_IMAGE")
    if given:
        return Path(given)
    script = REPO / "scripts" / "make-eval-image.sh"
    if os.geteuid() != 0:
        _unavailable(f"building it needs root: sudo bash {script} {stock_image}")
    import sys

    proc = subprocess.run(["bash", str(script), str(stock_image)], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHON=sys.executable))
    if proc.returncode != 0:
        _unavailable(f"{script} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])
