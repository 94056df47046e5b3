"""The stock test image and the stand-in registry, for tests that run a container.

`stock_image` (session fixture) is the Apptainer sandbox directory that
scripts/make-test-image.sh builds (a Debian Python with exactly the image contract's
packages; cached under /var/cache/ft-test-image), or $FT_TEST_IMAGE when set. Where it
cannot be had (not root, no debootstrap) the tests that need it skip, and fail on CI.

`standin_registry(tmp_path, stock_image)` makes a stand-in registry folder serving the
stock image as `docker://ft-test/stock:latest` (tests/standin/singularity resolves
URIs there through $FT_STANDIN_REGISTRY).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAKE_IMAGE = REPO / "scripts" / "make-test-image.sh"
STANDIN = REPO / "tests" / "standin"
STOCK_URI = "docker://ft-test/stock:latest"


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"stock test image unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"stock test image unavailable: {reason}")


@pytest.fixture(scope="session")
def stock_image() -> Path:
    given = os.environ.get("FT_TEST_IMAGE")
    if given:
        if not Path(given, "bin", "sh").exists():
            _unavailable(f"FT_TEST_IMAGE={given} is not a sandbox image folder")
        return Path(given)
    if os.geteuid() != 0:
        _unavailable(f"building it needs root: sudo bash {MAKE_IMAGE}, then export FT_TEST_IMAGE=<printed path>")
    proc = subprocess.run(["bash", str(MAKE_IMAGE)], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        _unavailable(f"{MAKE_IMAGE} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


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
