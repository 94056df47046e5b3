"""`ft image pull/check --runtime pyxis` and `ft submit` with a docker reference under Pyxis:
`enroot import` once into the image cache (the enroot stand-in, tests/standin/pyxis), the
check run in the image through `enroot start`, the local .sqsh used once it is there."""

from __future__ import annotations

import json
from pathlib import Path

from container_image import STOCK_URI
from launcher import runtime


def enroot_calls(site, command: str) -> list[dict]:
    lines = site.log.read_text().splitlines() if site.log.exists() else []
    return [r for r in map(json.loads, lines) if r["tool"] == "enroot" and r["argv"][1:2] == [command]]


def test_pull_imports_once_and_the_check_and_the_job_use_the_sqsh(ft, pyxis_site):
    site = pyxis_site
    pulled = ft("image", "pull", STOCK_URI, "--runtime", "pyxis", env=site.env)
    assert pulled.returncode == 0, pulled.stderr
    sqsh = Path(pulled.stdout.strip())
    assert sqsh.parent == site.home / "images" and sqsh.suffix == ".sqsh"
    assert sqsh.read_bytes()[:4] == b"hsqs" and (sqsh.parent / f".{sqsh.name}.sha256").is_file()
    (call,) = enroot_calls(site, "import")
    assert call["image"] == "docker://ft-test/stock:latest" and call["out"] != str(sqsh)  # a partial name, renamed
    assert not list(sqsh.parent.glob(".*partial*"))

    again = ft("image", "pull", "docker://ft-test/stock:latest", "--runtime", "pyxis", env=site.env)
    assert again.returncode == 0 and "was pulled before" in again.stderr and again.stdout.strip() == str(sqsh)
    assert len(enroot_calls(site, "import")) == 1

    checked = ft("image", "check", STOCK_URI, "--runtime", "pyxis", env=site.env)
    assert checked.returncode == 0, checked.stderr
    assert f"image: {sqsh} (pyxis)" in checked.stdout and "ok: this image can run ft's trainer" in checked.stdout
    (start,) = enroot_calls(site, "start")
    assert start["command"][-3:] == ["python", "-m", "ftcore.contract"] and start["root"] != "/"

    dry = ft("submit", "--factory", "tiny", "container.runtime=pyxis", f"container.image={STOCK_URI}", "--dry-run",
             env=site.env)
    assert dry.returncode == 0, dry.stderr
    assert f"--container-image={sqsh}" in dry.stdout and "not pulled yet" not in dry.stderr


def test_an_image_the_registry_lacks_keeps_nothing(ft, pyxis_site):
    result = ft("image", "pull", "docker://ft-test/stock:9.9", "--runtime", "pyxis", env=pyxis_site.env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "enroot import docker://ft-test/stock:9.9 failed" in result.stderr and "404 Not Found" in result.stderr
    assert not [p for p in (pyxis_site.home / "images").iterdir() if not p.name.endswith(".lock")]


def test_without_enroot_a_pyxis_job_names_the_reference_and_each_node_imports_it(pyxis_site, monkeypatch):
    """A login node without enroot: nothing to pull with, so the script names the image in
    enroot's form and Pyxis imports it when the job starts; the user is told how to cache it."""
    from launcher import config, submit

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    job = config.resolve("tiny", ["container.runtime=pyxis", "container.image=docker://nvcr.io/nvidia/pytorch:25.01-py3"]).job
    notes = submit.ready_image(job)
    assert "each node imports it when the job starts" in notes[0]
    assert "ft image pull docker://nvcr.io/nvidia/pytorch:25.01-py3 --runtime pyxis" in notes[0]
    assert "the image was not checked" in notes[1]
    assert runtime.of(job.container).image_to_run(job.container) == "nvcr.io#nvidia/pytorch:25.01-py3"
