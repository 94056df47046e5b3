"""The trainer benchmark runs end to end in --quick mode and prints its table (no speed asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train

REPO = Path(__file__).resolve().parents[2]


def test_train_speed_quick_prints_both_runners_and_the_ratios():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "train_speed.py"), "--quick", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for method in ("lora", "sft"):
        for runner in ("baseline", "ft"):
            assert re.search(rf"^\| {method} \| {runner} \| \d+ \| [\d.]+ \| ([\d.]+|–) \| [\d.]+ \|", out, re.M), out
        assert re.search(rf"^\| {method} \| [\d.]+× \| [\d.]+× \| [+-][\d.]+ \| [\d.]+× \|$", out, re.M), out


def test_gpu_suite_runs_end_to_end_in_dry_mode():
    """bench/gpu_suite.py on CPU with tiny shapes: every check and both speed rows run (none fails)."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--dry"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    # On CPU only the CUDA-only check may skip (and Liger, not installed here): the rest must pass.
    assert re.search(r"^## summary: 9 passed, 2 skipped, 0 failed", out, re.M), out[-3000:]
    for check in ("LoRA, data parallel", "full SFT, FSDP2 on one GPU", "padding-free attention", "QLoRA (nf4)",
                  "resume after preemption", "model.cpu_offload trains like resident shards",
                  "compiled layers train like eager ones, graph breaks named",
                  "speed: Llama-3.2-1B full SFT", "speed: Llama-3.1-8B LoRA r=16"):
        assert re.search(rf"^- PASS {re.escape(check)}", out, re.M), out[-3000:]
    assert out.count("| ft plan ÷ ft peak |") == 2


def test_the_gpu_suite_fails_on_a_failure_a_forbidden_skip_or_nothing_passed():
    """The gate itself: a suite whose checks skip proves nothing, so it must not pass."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(REPO / "bench"))
    ok = ("LoRA, data parallel: bf16 on cuda vs fp32 on CPU", "PASS", "")
    assert gpu_suite.verdict([ok], "cuda")[1] == 0
    assert gpu_suite.verdict([ok, ("no host sync between check points", "SKIP", "")], "cpu")[1] == 0
    line, code = gpu_suite.verdict([ok, ("no host sync between check points", "SKIP", "")], "cuda")
    assert code == 1 and "not allowed to skip here: no host sync" in line
    assert gpu_suite.verdict([ok, ("resume after preemption equals the straight run", "SKIP", "")], "cpu")[1] == 1
    assert gpu_suite.verdict([ok, ("speed: x", "FAIL", "exit 1")], "cpu")[1] == 1
    assert gpu_suite.verdict([("QLoRA (nf4) trains like bf16 LoRA", "SKIP", "")], "cuda")[1] == 1  # nothing passed
    # A check that raises is reported FAIL (and the suite goes on), which the verdict counts.
    gpu_suite.RESULTS.clear()
    gpu_suite.check("broken")(lambda: 1 / 0)()
    assert gpu_suite.RESULTS == [("broken", "FAIL", "ZeroDivisionError: division by zero")]
    assert gpu_suite.verdict([ok, *gpu_suite.RESULTS], "cpu")[1] == 1


def test_jobs_scale_runs_and_prints_the_ratios():
    """bench/jobs_scale.py on 60 folders: both ways agree on the job, and the table prints."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "jobs_scale.py"), "--folders", "60", "--repeat", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for row in ("jobs -n 20 (library)", "status ID (library)"):
        assert re.search(rf"^\| {re.escape(row)} \| [\d.]+ \| [\d.]+ \| \d+× \|$", done.stdout, re.M), done.stdout
    assert "ft status ID (command line)" in done.stdout
