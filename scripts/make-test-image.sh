#!/usr/bin/env bash
# Build the stock test image and print its path:
#
#   bash scripts/make-test-image.sh            # -> /var/cache/ft-test-image/<key>/rootfs
#   bash scripts/make-test-image.sh --floors   # -> /var/cache/ft-test-image-floors/<key>/rootfs
#
# --floors: the contract's packages at exactly their minimums (`dist==minimum`), so CI runs
# the oldest versions the contract promises. torch stays the pinned CPU build: no older CPU
# build of torch can be installed here (the package index holds CUDA builds only), so
# torch's floor is held by the contract's feature probes instead (README, "The image contract").
#
# An Apptainer sandbox directory (the image format `apptainer build --sandbox` writes)
# holding a minimal Debian 12 (debootstrap --variant=minbase, python3) and, in
# /usr/local/lib/python3.X/dist-packages, exactly the packages of ft's image contract
# (ftcore/contract.py REQUIRED) with their dependencies: what a stock PyTorch + Hugging
# Face image has. Nothing of ft, of this checkout, of a virtualenv, of job folders or of
# test data goes in; ft's SLURM tests run their jobs in it through tests/standin/apptainer.
# torch is the CPU wheel pinned by .ci/run (torch==2.13.0), found by pip on this machine.
#
# The image is cached between runs on the same machine, keyed by a hash of this script
# and the contract's requirements: a second call prints the path at once. It is built under a
# temporary name and renamed into place, under a lock, so concurrent calls and a killed
# build never leave a half-built image behind. Needs root (debootstrap) and Debian's
# debootstrap package; the Debian mirror and PyPI (or the machine's pip index) must be
# reachable.
#
# Environment knobs:
#   FT_TEST_IMAGE_CACHE  cache folder (default /var/cache/ft-test-image)
#   FT_DEBIAN_MIRROR     Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   PYTHON               host python used to read the contract and to run pip (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLOORS=""
if [ "${1:-}" = "--floors" ]; then FLOORS=1; shift; fi
[ $# -eq 0 ] || { echo "usage: make-test-image.sh [--floors]" >&2; exit 2; }
CACHE="${FT_TEST_IMAGE_CACHE:-/var/cache/ft-test-image}${FLOORS:+-floors}"
MIRROR="${FT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PY="${PYTHON:-python3}"
SUITE=bookworm
TORCH="torch==2.13.0"

log() { echo "make-test-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mapfile -t requirements < <(cd "$ROOT" && FLOORS="$FLOORS" "$PY" -c '
import os
from ftcore import contract
op = "==" if os.environ["FLOORS"] else ">="
for p in contract.REQUIRED:
    if p.dist != "torch":  # torch: the pinned CPU build below
        print(p.dist + op + p.minimum)')
mapfile -t modules < <(cd "$ROOT" && "$PY" -c '
from ftcore import contract
for p in contract.REQUIRED:
    print(p.module)')
key=$( { cat "${BASH_SOURCE[0]}"; printf '%s\n' "${requirements[@]}"; } | sha256sum | cut -c1-16)
image="$CACHE/$key/rootfs"
if [ -f "$CACHE/$key/complete" ]; then
    echo "$image"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$CACHE/$key/complete" ]; then  # built by another call while we waited
    echo "$image"
    exit 0
fi

t0=$(date +%s)
work="$CACHE/.build-$key-$$"
rm -rf "${CACHE:?}"/.build-* "${CACHE:?}/$key"  # leftovers of killed builds (we hold the lock)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
rootfs="$work/rootfs"

log "debootstrap $SUITE (minbase + python3) from $MIRROR"
debootstrap --variant=minbase --include=python3,python-is-python3,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

pyver=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site="$rootfs/usr/local/lib/python$pyver/dist-packages"
log "pip install into the image (Python $pyver): $TORCH ${requirements[*]}"
# Wheels only, for the image's Python version: nothing is compiled against the host.
"$PY" -m pip install -q --no-cache-dir --no-compile --only-binary=:all: \
    --python-version "$pyver" --implementation cp --target "$site" \
    "$TORCH" "${requirements[@]}" >"$work/pip.log" 2>&1 \
    || { tail -n 30 "$work/pip.log" >&2; die "pip install failed"; }
rm -rf "${site:?}/bin"  # console scripts with the host's interpreter in their #! line

# What `apptainer build --sandbox` adds: the metadata folder whose env scripts set the
# image's own PATH (Apptainer sources /.singularity.d/env/*.sh before running a command).
mkdir -p "$rootfs/.singularity.d/env" "$rootfs/.singularity.d/actions" "$rootfs/.singularity.d/libs"
cat >"$rootfs/.singularity.d/env/90-environment.sh" <<'EOF'
#!/bin/sh
# ft's stock test image: the image's own PATH, as a Docker image's ENV PATH would set it.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EOF
printf '#!/bin/sh\nexec python "$@"\n' >"$rootfs/.singularity.d/runscript"
chmod 755 "$rootfs/.singularity.d/runscript" "$rootfs/.singularity.d/env/90-environment.sh"
ln -sfn .singularity.d/runscript "$rootfs/singularity"
cat >"$rootfs/.singularity.d/labels.json" <<EOF
{"org.ft.test-image": "${FLOORS:+floors}${FLOORS:-stock}", "org.ft.contract-key": "$key", "org.ft.torch": "$TORCH"}
EOF

log "checking the contract's imports inside the image"
chroot "$rootfs" env -i PATH=/usr/local/bin:/usr/bin:/bin python -c '
import importlib, sys
versions = {m: getattr(importlib.import_module(m), "__version__", "?") for m in sys.argv[1:]}
print("python", sys.version.split()[0], versions)' "${modules[@]}" >&2

# Images of an older contract or script: replaced by this one.
find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build-*' -exec rm -rf {} +
mkdir -p "$CACHE/$key"
mv "$rootfs" "$image"
du -sm "$image" | cut -f1 >"$CACHE/$key/size-mb"
echo $(( $(date +%s) - t0 )) >"$CACHE/$key/build-seconds"
touch "$CACHE/$key/complete"
log "built $image in $(cat "$CACHE/$key/build-seconds") s, $(cat "$CACHE/$key/size-mb") MB"
echo "$image"
