"""`ft image check` says whether an image can run lm-eval (`ft eval --tasks` in the evaluation
job): lm-eval and accelerate are optional packages of the image contract (ftcore/contract.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftcore import contract

LINE = "lm-eval (`ft eval --tasks` in this image): "


def test_the_stock_image_cannot_run_lm_eval_and_says_how(ft, container_site):
    result = ft("image", "check", str(container_site.image), env=container_site.env)
    assert result.returncode == 0, result.stderr  # the trainer's contract holds; lm-eval is optional
    assert f"{LINE}no: lm-eval is not installed" in result.stdout
    assert "pip install 'lm-eval>=0.4.13' 'accelerate>=0.26'" in result.stdout


@pytest.fixture
def image_with_lm_eval(stock_image, tmp_path) -> Path:
    """The stock image plus lm-eval (peft already brought accelerate), copied from this machine's
    Python into a hard-linked copy of the image (the same Python 3.11)."""
    pytest.importorskip("lm_eval")
    copy = tmp_path / "with-lm-eval"
    subprocess.run(["cp", "-al", str(stock_image), str(copy)], check=True)
    site = next((copy / "usr" / "local" / "lib").glob("python3*/dist-packages"))
    here = Path(next(p for p in sys.path if p.endswith("site-packages") and (Path(p) / "lm_eval").is_dir()))
    assert not (site / "lm_eval").exists() and (site / "accelerate").is_dir()
    for path in [here / "lm_eval", *here.glob("lm_eval-*.dist-info")]:
        shutil.copytree(path, site / path.name, copy_function=shutil.copy)
    return copy


def test_an_image_with_lm_eval_can(ft, container_site, image_with_lm_eval):
    result = ft("image", "check", str(image_with_lm_eval), env=container_site.env)
    assert result.returncode == 0, result.stderr
    assert f"{LINE}yes" in result.stdout


def test_the_rule_reads_a_report():
    found = {"packages": {"lm_eval": {"version": "0.4.13", "error": None},
                          "accelerate": {"version": "1.16.0", "error": None}}}
    assert contract.lm_eval_problem(found) is None
    found["packages"]["lm_eval"]["version"] = "0.4.2"
    assert contract.lm_eval_problem(found) == "lm-eval 0.4.2 is older than lm-eval>=0.4.13"
    assert "not checked" in contract.lm_eval_problem({"packages": {}})  # a report from an older ft
