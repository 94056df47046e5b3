"""The trainer benchmark runs end to end in --quick mode and prints its table (no speed asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
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
    """bench/gpu_suite.py on CPU with tiny shapes: the facts first, then every check (the attention
    kernel's first) under the correctness budget, then both speed rows under theirs (none fails)."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--dry"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-3000:]
    # On CPU only the CUDA-only check may skip (and Liger, not installed here): the rest must pass.
    assert re.search(r"^## summary: 9 passed, 2 skipped, 0 failed", out, re.M), out[-3000:]
    for check in ("LoRA, data parallel", "full SFT, FSDP2 on one GPU", "padding-free attention", "QLoRA (nf4)",
                  "resume after preemption", "model.cpu_offload trains like resident shards",
                  "compiled layers train like eager ones, no graph break in a layer",
                  "speed: Llama-3.2-1B full SFT", "speed: Llama-3.1-8B LoRA r=16"):
        assert re.search(rf"^- PASS {re.escape(check)}", out, re.M), out[-3000:]
    assert out.count("| ft plan ÷ ft peak |") == 2
    # The order a device call prints: facts (the kernel ft chose among them), correctness with the
    # attention kernel first, then each speed row with its budget.
    order = ["## 0. facts", "torch ", "varlen_attn", "flash-attn: ", "SDPA backends", "Llama-3.1-8B (cpu, fp32",
             "## 1. correctness (budget 600 s)", "PASS  padding-free attention vs padded SDPA: sdpa_per_example ran",
             "PASS  compiled layers train like eager ones", "## 2. speed and memory",
             "### Llama-3.2-1B full SFT, seq 2048 (budget 300 s)", "### Llama-3.1-8B LoRA r=16, seq 4096 (budget 300 s)"]
    at = [out.find(line) for line in order]
    assert -1 not in at and at == sorted(at), list(zip(order, at))
    assert re.search(r"^- PASS speed: Llama-3.1-8B LoRA r=16, seq 4096: exit 0 in \d+ s \(budget 300 s\)", out, re.M)


def test_the_gpu_suite_budgets_fit_one_device_call_and_a_row_over_its_budget_skips():
    """Six minutes for the device call: the suite's budgets leave room for the wheels and the facts
    inside device_run.sh's last-resort cut, and a row past its budget is stopped and says so."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(REPO / "bench"))
    cut = int(re.search(r"timeout (\d+) python3 bench/gpu_suite.py", (REPO / "bench" / "device_run.sh").read_text())[1])
    cuda = gpu_suite.BUDGETS["cuda"]
    assert sum(v for k, v in cuda.items() if k != "total") <= cuda["total"] < cut <= 360 - 15
    assert set(cuda) == set(gpu_suite.BUDGETS["cpu"]) == {"correctness", "total"} | {
        f"speed: {name}" for name in gpu_suite.SPEED}
    gpu_suite.RESULTS.clear()
    gpu_suite.run_row("speed: a row", [sys.executable, "-c", "import time; time.sleep(30)"], 1)
    assert gpu_suite.RESULTS == [("speed: a row", "SKIP", "stopped at its budget of 1 s: no figure (the rest of "
                                                           "the call still runs)")]
    # Past the correctness budget a check is left out, and that fails the verdict.
    gpu_suite.RESULTS.clear()
    gpu_suite._deadline[:] = [0.0]
    try:
        gpu_suite.check("resume after preemption equals the straight run")(lambda: 1 / 0)()
    finally:
        gpu_suite._deadline.clear()
    assert gpu_suite.RESULTS == [("resume after preemption equals the straight run", "SKIP",
                                  "left out: the correctness budget ran out")]
    ok = ("LoRA, data parallel: bf16 on cuda vs fp32 on CPU", "PASS", "")
    assert gpu_suite.verdict([ok, *gpu_suite.RESULTS], "cuda")[1] == 1
    # A row that would pass the suite's total is not started, and says so.
    gpu_suite.RESULTS.clear()
    gpu_suite.speed("cuda", True, time.perf_counter() + 5)
    assert len(gpu_suite.RESULTS) == 2 and \
        all(r[1] == "SKIP" and r[2].startswith("not run: ") for r in gpu_suite.RESULTS), gpu_suite.RESULTS
    assert gpu_suite.verdict([ok, ("speed: Llama-3.1-8B LoRA r=16, seq 4096", "SKIP", "")], "cuda")[1] == 0


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
