#!/usr/bin/env bash
# One command from a fresh checkout to a fine-tuned model that answers, on this machine:
#   bash scripts/quickstart.sh [OVERRIDES...]
# Makes .venv and installs ft there editable (edits to factories/ and trainer/ take effect
# at once) with its trainer on a CPU build of torch. Then, in about a minute on 2 cores:
#   1. trains the `tiny` factory here (watch val_loss, on 40 held-out questions, fall);
#   2. scores it on those held-out questions: `ft eval` prints exact match and F1;
#   3. asks it one question it never saw: `ft generate` answers it.
# FT="python -m launcher" (any ft command line, shell-quoted) skips the install and uses that ft instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FT:-}" ]; then
    # Shell words, so a path with a space in it can be quoted (split by Python's shlex, not eval).
    mapfile -d '' ft < <(python3 -c 'import shlex, sys; sys.stdout.write("\0".join(shlex.split(sys.argv[1])) + "\0")' "$FT")
else
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    # Pin torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
    .venv/bin/pip install -q torch==2.13.0
    .venv/bin/pip install -q -e ".[train]"
    ft=(.venv/bin/ft)
fi

echo "== 1. train: ft submit --factory tiny --executor local --yes $*"
"${ft[@]}" submit --factory tiny --executor local --yes "$@"
job=$("${ft[@]}" jobs --json --limit 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["folder"])')

echo "== 2. score on the held-out questions: ft eval $job"
"${ft[@]}" eval "$job"

echo "== 3. a question it never saw: ft generate $job --context ... --question ..."
"${ft[@]}" generate "$job" --context "Ben has a black kite. Ben lives in Lima." --question "Where does Ben live?"
