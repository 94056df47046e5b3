#!/usr/bin/env bash
# The ONE command for a lent GPU machine (one H100/H200): the whole GPU suite, its table to $OUT.
#
#   bash bench/device_wheels.sh                                 # once, here: pydantic wheels into .whl/
#   device run, carry [".whl"], timeout_s 540:  bash bench/device_run.sh
#   bash bench/device_run.sh --dry --only correctness            # the same wrapper rehearsed on a CPU
#
# On that machine: its stock python3 (torch + CUDA, transformers, peft; no network) plus the
# carried wheels, installed into /tmp/site and put on PYTHONPATH. Then bench/gpu_suite.py:
# correctness against the CPU reference, offload, compile, QLoRA when torchao loads, then the
# speed rows against transformers.Trainer + peft with MFU and peak memory against `ft plan`.
# It is cut at 470 s (the suite's budget is under 8 minutes) so the table still comes back;
# the exit status is the suite's (1: a check failed, or skipped where it may not).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c 'import torch, transformers, peft, pydantic; print("torch", torch.__version__, "| transformers",
transformers.__version__, "| peft", peft.__version__, "| pydantic", pydantic.VERSION)'; } 2>&1 | tee "$OUT/versions.txt"
PYTHONUNBUFFERED=1 timeout 470 python3 bench/gpu_suite.py "$@" 2>&1 | tee "$OUT/gpu_suite.md"
exit "${PIPESTATUS[0]}"
