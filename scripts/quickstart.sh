#!/usr/bin/env bash
# One command from a fresh checkout to a finished fine-tuning job on this machine:
#   bash scripts/quickstart.sh
# Makes .venv, installs ft with its trainer (CPU torch), and runs the `tiny` factory locally.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# Pin torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q ".[train]"
exec .venv/bin/ft submit --factory tiny --executor local --yes "$@"
