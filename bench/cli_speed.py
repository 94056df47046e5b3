"""How fast ft answers on a login node, against bare Python start-up in the same run.

    python bench/cli_speed.py [--runs 15]

Prints the median wall time of `ft --help` and `ft submit --factory llama31_8b --dry-run`
(the launcher never imports torch), with `python -c pass` as the baseline ratio, and the
import of torch for scale (what a launcher that imported it would pay on every command).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def median_seconds(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="ft-bench-")
    env = dict(os.environ, FT_HOME=home, PYTHONPATH=str(REPO))
    ft = [sys.executable, "-m", "launcher"]
    cases = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "ft --help": [*ft, "--help"],
        "ft submit --factory llama31_8b --dry-run": [*ft, "submit", "--factory", "llama31_8b", "--dry-run"],
        "ft show --factory llama31_8b": [*ft, "show", "--factory", "llama31_8b"],
        "python -c 'import torch' (scale)": [sys.executable, "-c", "import torch"],
    }
    baseline = None
    print(f"{'command':45s} {'median s':>9s} {'× python':>9s}   ({args.runs} runs, {os.cpu_count()} cores)")
    for name, argv in cases.items():
        seconds = median_seconds(argv, args.runs, env)
        baseline = baseline or seconds
        print(f"{name:45s} {seconds:9.3f} {seconds / baseline:9.1f}")


if __name__ == "__main__":
    main()
