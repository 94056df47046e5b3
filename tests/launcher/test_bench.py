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
            assert re.search(rf"^\| {method} \| {runner} \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", out, re.M), out
        assert re.search(rf"^\| {method} \| [\d.]+× \| [\d.]+× \| [+-][\d.]+ \|$", out, re.M), out
