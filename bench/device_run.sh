#!/usr/bin/env bash
# The ONE command for a lent GPU machine (one H100/H200): facts, correctness, speed; the table to $OUT.
#
#   bash bench/device_wheels.sh                                 # once, here: the wheels into .whl/
#   device run, carry [".whl"], timeout_s 420:  bash bench/device_run.sh
#   bash bench/device_run.sh --dry --only correctness            # the same wrapper rehearsed on a CPU
#
# On that machine: its stock python3 (torch + CUDA, transformers, peft; no network, perhaps no
# pip) plus the carried wheels, unzipped into /tmp/site (a wheel is a zip archive: no pip needed)
# and put first on PYTHONPATH, typing_extensions included (pydantic needs a newer one than torch).
# bench/gpu_suite.py then prints the facts first (versions, varlen_attn's signature, flash-attn,
# the SDPA backends, the kernel ft chooses), then correctness and each speed row under its own
# budget (gpu_suite.BUDGETS), six minutes in all; the cut at 345 s is a last resort that still
# leaves the table in $OUT. The exit status is the suite's (1: a check failed, or skipped where
# it may not).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT="${OUT:-bench/out}"
SITE="${FT_DEVICE_SITE:-/tmp/site}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    rm -rf "$SITE" && mkdir -p "$SITE" || exit 1
    for wheel in .whl/*.whl; do
        python3 -m zipfile -e "$wheel" "$SITE" || { echo "cannot unzip $wheel" >&2; exit 1; }
    done
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "carried wheels on PYTHONPATH ($SITE): $(cd .whl && printf '%s ' *.whl)"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not here"; } | tee "$OUT/versions.txt"
PYTHONUNBUFFERED=1 timeout 345 python3 bench/gpu_suite.py "$@" 2>&1 | tee "$OUT/gpu_suite.md"
exit "${PIPESTATUS[0]}"
