"""`ft image check` and `ft image pull`, and what `ft submit` does with images: real runtime
calls through the isolating container stand-in, with the stock test image."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from container_image import STANDIN, STOCK_URI, build_sif, site_for
from ftcore import contract
from launcher import config, submit
from launcher.apptainer import Apptainer

REPO = Path(__file__).resolve().parents[2]


def ft_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "launcher", *args]


def test_check_prints_the_images_python_torch_cuda_and_packages(ft, container_site):
    result = ft("image", "check", str(container_site.image), env=container_site.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "python 3.11" in out and "(/usr/bin/python)" in out  # the image's Python, not the host's
    assert "torch 2.13.0+cpu: no CUDA (a CPU build); GPUs visible here: 0" in out
    for package in contract.REQUIRED:
        assert package.dist in out
    assert "ok: this image can run ft's trainer" in out


@pytest.fixture
def image_without_peft(stock_image, tmp_path) -> Path:
    """The stock image less peft: a hard-linked copy (cheap), the package removed from it."""
    copy = tmp_path / "no-peft"
    subprocess.run(["cp", "-al", str(stock_image), str(copy)], check=True)
    site = next((copy / "usr" / "local" / "lib").glob("python3*/dist-packages"))
    shutil.rmtree(site / "peft")
    return copy


def test_check_names_what_is_missing_and_the_contract(ft, container_site, image_without_peft):
    result = ft("image", "check", str(image_without_peft), env=container_site.env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    floor = next(p.minimum for p in contract.REQUIRED if p.dist == "peft")
    assert f"peft is missing (ModuleNotFoundError: No module named 'peft'); the contract needs peft>={floor}" in result.stderr
    assert "peft LoraConfig is missing (ModuleNotFoundError" in result.stderr  # its feature too
    assert "ftcore/contract.py" in result.stderr and "pip install" in result.stderr


@pytest.fixture
def image_without_get_total_norm(stock_image, tmp_path) -> Path:
    """The stock image whose torch lacks a feature the trainer calls, at an acceptable version:
    a hard-linked copy with a .pth file (a new file; site runs its import line at start-up)
    that removes it."""
    copy = tmp_path / "old-torch"
    subprocess.run(["cp", "-al", str(stock_image), str(copy)], check=True)
    site = next((copy / "usr" / "local" / "lib").glob("python3*/dist-packages"))
    (site / "zz_old_torch.pth").write_text("import torch.nn.utils; del torch.nn.utils.get_total_norm\n")
    return copy


def test_check_probes_the_features_the_trainer_calls_not_only_versions(ft, container_site,
                                                                         image_without_get_total_norm):
    result = ft("image", "check", str(image_without_get_total_norm), env=container_site.env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("torch.nn.utils.get_total_norm is missing (torch.nn.utils.get_total_norm is missing), which the "
            "gradient norm and trainer.grad_clip needs") in result.stderr
    assert "older than" not in result.stderr  # every version passes: only the probe finds it


def test_check_lists_each_feature(ft, container_site):
    out = ft("image", "check", str(container_site.image), env=container_site.env).stdout
    assert "features the trainer calls:" in out
    for feature, _ in contract.FEATURES:
        assert f"{feature.name}: {feature.needed_for}" in out
    assert "(ft passes `dtype=`)" in out


@pytest.mark.train
def test_the_contracts_floors_pass_the_check_and_train_lora_and_sft(ft, floor_image, monkeypatch):
    """CI's second stock image holds every package of the contract at its minimum (torch aside,
    scripts/make-test-image.sh --floors): the oldest image the README promises trains both methods."""
    import re

    with site_for(floor_image) as site:
        monkeypatch.setenv("FT_HOME", str(site.home))
        checked = ft("image", "check", str(site.image), env=site.env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for package in contract.REQUIRED:
            if package.dist != "torch":
                assert re.search(rf"  {re.escape(package.dist)} +{re.escape(package.minimum)}(\.0)? ", checked.stdout), \
                    (package, checked.stdout)
        assert "(ft passes `torch_dtype=`)" in checked.stdout  # the older keyword, adapted to
        for method in ([], ["peft=lora"]):
            args = ["submit", "--factory", "tiny", *site.overrides(), *method, "--executor", "local",
                    "trainer.max_steps=3", "--yes"]
            result = ft(*args, env=site.env)
            assert result.returncode == 0, result.stdout + result.stderr
        finals = sorted((site.home / "jobs").glob("*/checkpoints/step-000003"))
        assert len(finals) == 2
        assert {(f / "adapter_config.json").is_file() for f in finals} == {True, False}  # one LoRA, one SFT
        for final in finals:
            assert (final / "config.json").is_file() or (final / "adapter_model.safetensors").is_file()


def test_submit_refuses_an_image_that_cannot_run_the_trainer_unless_told(ft, container_site, image_without_peft):
    args = ["submit", "--factory", "tiny", *container_site.overrides(image=str(image_without_peft)),
            "peft=lora", "--executor", "local", "trainer.max_steps=2", "--yes"]
    refused = ft(*args, env=container_site.env)
    assert refused.returncode == 2 and "cannot run ft's trainer" in refused.stderr and "peft" in refused.stderr
    assert not (container_site.home / "jobs").exists()  # nothing written
    skipped = ft(*args, "--skip-image-check", env=container_site.env)
    assert "image check skipped" in skipped.stderr
    assert skipped.returncode != 0 and "No module named 'peft'" in skipped.stdout + skipped.stderr  # the job says it


def test_submit_runs_in_the_container_and_checks_each_image_once(ft, container_site, tmp_path):
    """A local run through the runtime: the job folder, model and data under /srv, submitted
    from another folder; the second submission does not check the image again."""
    args = ["submit", "--factory", "tiny", *container_site.overrides(), "--executor", "local",
            "trainer.max_steps=3", "checkpoint.every_steps=3", "--yes"]
    first = ft(*args, env=container_site.env, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "image check passed: Python 3.11" in first.stderr
    second = ft(*args, env=container_site.env, cwd=tmp_path)
    assert second.returncode == 0 and "image check passed before" in second.stderr
    checks = [c for c in container_site.calls() if c["command"][-1] == "ftcore.contract"]
    assert len(checks) == 1
    for folder in (container_site.home / "jobs").iterdir():
        assert (folder / "checkpoints" / "latest").is_file()
    os.utime(container_site.image)  # a changed image is checked again
    third = ft(*args, env=container_site.env, cwd=tmp_path)
    assert "image check passed: " in third.stderr


def test_without_a_runtime_here_submit_says_so_and_goes_on(container_site, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    job = config.resolve("tiny", container_site.overrides()).job
    notes = submit.ready_image(job)
    assert any("apptainer is not on PATH here, so the image was not checked" in n for n in notes)


def _pull(env: dict, uri: str = STOCK_URI) -> subprocess.Popen:
    return subprocess.Popen(ft_cmd("image", "pull", uri), env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_two_pulls_at_once_make_one_complete_sif(container_site):
    env = {**container_site.env, "FT_STANDIN_PULL_SECONDS": "3"}
    procs = [_pull(env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (path,) = {out.strip() for out, _ in outs}
    assert Path(path).parent == container_site.home / "images"
    assert len(container_site.calls("pull")) == 1  # the second waited for the lock, then found it
    sif = Path(path)
    assert sorted(p.name for p in sif.parent.iterdir() if not p.name.endswith(".lock")) == [f".{sif.name}.sha256",
                                                                                            sif.name]
    assert (sif.parent / f".{sif.name}.sha256").read_text() == f"{hashlib.sha256(sif.read_bytes()).hexdigest()}  {sif.name}\n"
    proc = subprocess.run([str(STANDIN / "apptainer"), "exec", path, "python", "-c", "print('ok')"],
                          capture_output=True, text=True, cwd="/tmp")
    assert proc.stdout == "ok\n", proc.stderr


def test_a_failed_pull_shows_the_runtimes_message_and_keeps_nothing(ft, container_site):
    result = ft("image", "pull", "docker://ft-test/stock:9.9", env=container_site.env)
    assert result.returncode == 2
    assert "apptainer pull docker://ft-test/stock:9.9 failed (exit 255); no image was kept" in result.stderr
    assert "MANIFEST_UNKNOWN" in result.stderr and "Traceback" not in result.stderr
    cache = container_site.home / "images"
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]
    refused = ft("submit", "--factory", "tiny", *container_site.overrides(image="docker://ft-test/stock:9.9"),
                 "--yes", env=container_site.env)
    assert refused.returncode == 2 and "MANIFEST_UNKNOWN" in refused.stderr
    assert not (container_site.home / "jobs").exists()  # nothing submitted, nothing written


def test_a_pull_killed_half_way_leaves_no_sif_and_the_next_one_completes(container_site):
    env = {**container_site.env, "FT_STANDIN_PULL_SECONDS": "30"}
    proc = _pull(env)
    cache = container_site.home / "images"
    deadline = time.monotonic() + 60
    while not (cache.is_dir() and any(".partial-" in p.name for p in cache.iterdir())):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # ft and the runtime's pull, as a closed terminal would
    proc.wait()
    assert not list(cache.glob("*.sif"))  # never a partial file under the SIF's name
    again = _pull(container_site.env)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    name = Path(out.strip()).name
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [f".{name}.sha256", name]


def test_sif_names_are_readable_and_distinct():
    a, b = (Apptainer().cached_name(f"docker://nvcr.io/nvidia/nemo:{tag}") for tag in ("25.07", "25.09"))
    assert a.startswith("nemo_25.07-") and a.endswith(".sif") and a != b


def test_dry_run_neither_pulls_nor_checks(ft, container_site):
    result = ft("submit", "--factory", "tiny", *container_site.overrides(image=STOCK_URI), "--dry-run",
                env=container_site.env)
    assert result.returncode == 0, result.stderr
    sif = str(container_site.home / "images" / Apptainer().cached_name(STOCK_URI))
    assert f"dry run: {STOCK_URI} is not pulled yet; `ft submit` pulls it into {sif} first" in " ".join(result.stderr.split())
    assert sif in result.stdout and STOCK_URI not in result.stdout
    assert not container_site.log.exists()  # the runtime was never called
