#!/usr/bin/env bash
# The wheels the lent GPU machine lacks, for bench/device_run.sh, into .whl/ (git-ignored):
#
#   bash bench/device_wheels.sh                   # here, where the package index is reachable
#   PYVER=3.11 bash bench/device_wheels.sh        # for a rehearsal on this machine's Python
#
# That machine's python3 (3.12, torch 2.11 + CUDA, transformers, peft, safetensors, tokenizers,
# PyYAML) has no pydantic, which ft's schema needs, and may have neither pip nor a
# typing_extensions as new as pydantic's floor (4.14.1); it has no network, so the wheels travel
# with the working tree (the device tool's `carry: [".whl"]`) and device_run.sh unzips them onto
# PYTHONPATH. pydantic and its core, the two small packages pydantic needs, and typing_extensions.
# No torchao: which torchao build matches that torch 2.11 is not known here, and the suite's QLoRA
# check may SKIP for exactly that reason (bench/gpu_suite.py MAY_SKIP).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
mkdir -p .whl
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "pydantic==2.12.5" "pydantic-core==2.41.5" "annotated-types==0.7.0" "typing-inspection==0.4.2" \
    "typing-extensions==4.15.0"
ls -la .whl
