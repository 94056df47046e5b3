#!/usr/bin/env bash
# Build the stock test image plus lm-evaluation-harness and print its path:
#
#   bash scripts/make-eval-image.sh STOCK_ROOTFS   # -> /var/cache/ft-test-image-eval/<key>/rootfs
#
# What a user's image needs to run `ft eval --tasks` as an evaluation job: the image contract's
# packages (the stock image, scripts/make-test-image.sh) and lm-eval with its dependencies
# (ftcore/contract.py LM_EVAL at its minimum). A hard-linked copy of the stock image (cheap, and
# the stock image is never written), into which pip installs lm-eval for the image's Python;
# a package the stock image has already is kept as it is (nothing of two versions mixed).
# lm-eval's dependencies that publish no wheel (sqlitedict, rouge-score, word2number: pure
# Python) are built into wheels first. Cached like the stock image, keyed by this script, the
# stock image's path (which holds its own key) and lm-eval's version; built under a temporary
# name and renamed into place, under a lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 1 ] && [ -d "$1" ] || { echo "usage: make-eval-image.sh STOCK_ROOTFS" >&2; exit 2; }
STOCK="$(cd "$1" && pwd)"
CACHE="${FT_TEST_IMAGE_CACHE:-/var/cache/ft-test-image}-eval"
PY="${PYTHON:-python3}"
LM_EVAL=$(cd "$ROOT" && "$PY" -c 'from ftcore import contract; print(contract.LM_EVAL.dist + "==" + contract.LM_EVAL.minimum)')

log() { echo "make-eval-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

key=$( { cat "${BASH_SOURCE[0]}"; echo "$STOCK"; echo "$LM_EVAL"; } | sha256sum | cut -c1-16)
image="$CACHE/$key/rootfs"
if [ -f "$CACHE/$key/complete" ]; then
    echo "$image"
    exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$CACHE/$key/complete" ]; then
    echo "$image"
    exit 0
fi

t0=$(date +%s)
work="$CACHE/.build-$key-$$"
rm -rf "${CACHE:?}"/.build-* "${CACHE:?}/$key"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
cp -al "$STOCK" "$work/rootfs"
site=$(ls -d "$work"/rootfs/usr/local/lib/python3*/dist-packages)
pyver=$(basename "$(dirname "$site")" | sed 's/^python//')
log "pip install $LM_EVAL into a copy of $STOCK (Python $pyver)"
"$PY" -m pip wheel -q --no-deps -w "$work/wheels" sqlitedict rouge-score word2number >"$work/pip.log" 2>&1 \
    || { tail -n 30 "$work/pip.log" >&2; die "pip wheel failed"; }
"$PY" -m pip install -q --no-cache-dir --no-compile --only-binary=:all: --find-links "$work/wheels" \
    --python-version "$pyver" --implementation cp --target "$work/new" "$LM_EVAL" >>"$work/pip.log" 2>&1 \
    || { tail -n 30 "$work/pip.log" >&2; die "pip install failed"; }
rm -rf "$work/new/bin"
for entry in "$work"/new/*; do  # only what the stock image lacks: its own packages stay as they are
    [ -e "$site/$(basename "$entry")" ] || mv "$entry" "$site/"
done
find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build-*' -exec rm -rf {} +
mkdir -p "$CACHE/$key"
mv "$work/rootfs" "$image"
echo $(( $(date +%s) - t0 )) >"$CACHE/$key/build-seconds"
touch "$CACHE/$key/complete"
log "built $image in $(cat "$CACHE/$key/build-seconds") s"
echo "$image"
