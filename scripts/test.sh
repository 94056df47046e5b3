#!/usr/bin/env bash
# Run ft's test suite: `bash scripts/test.sh [PYTEST ARGS...]` (from anywhere).
#
# The Python used is, in order: $FT_PYTHON, the active virtualenv ($VIRTUAL_ENV),
# ./.venv-ci (made by .ci/run), ./.venv, then python3 on PATH. pytest runs from the
# repository root; `python -m pytest` puts the root on sys.path, so tests import the
# checkout while the `ft` console script comes from the installed package.
# pytest's exit status 5 ("no tests collected") is turned into a failure.
#
# FT_TEST_WORKERS=N runs the test files in N processes (pytest-xdist, `--dist loadfile`: each
# file whole in one process, so a file's fixtures and order hold); .ci/run uses 2. The fast
# suite for a change: `bash scripts/test.sh -m "not slurm and not compile"`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -n "${FT_PYTHON:-}" ]; then
    PY="$FT_PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PY="$VIRTUAL_ENV/bin/python"
elif [ -x "$ROOT/.venv-ci/bin/python" ]; then
    PY="$ROOT/.venv-ci/bin/python"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
fi
# Console scripts (ft) of that environment come first on PATH.
PATH="$(dirname "$PY"):$PATH"
export PATH

echo "scripts/test.sh: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
PARALLEL=()
if [ "${FT_TEST_WORKERS:-1}" != 1 ]; then
    PARALLEL=(-n "$FT_TEST_WORKERS" --dist loadfile)
fi
rc=0
# The 15 slowest tests are listed before the summary: where the suite's wall time goes.
"$PY" -m pytest -q --durations=15 "${PARALLEL[@]}" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "scripts/test.sh: FAILED: pytest collected no tests (exit status 5)" >&2
    exit 1
fi
exit "$rc"
