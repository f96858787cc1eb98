#!/usr/bin/env bash
# From a clean clone to `unifiedq bench` output in one command (README "Install"):
#
#   bash scripts/quickstart.sh [unifiedq bench arguments...]
#
# 1. On Debian/Ubuntu, as root (or with sudo), installs what a bare machine lacks from apt:
#    python3-venv (Debian's python3 has no `venv`/`ensurepip` without it), gcc and python3-dev
#    (to compile the shm:// ring's C module; without them shm:// runs its slower pure-Python
#    path, and the script says so).
# 2. Creates a virtual environment (.venv; Debian's system Python refuses `pip install` outside
#    one) and installs this checkout into it with the `shm` extra: no server is needed.
# 3. Runs `unifiedq bench` on the embedded default drivers, memory:// and shm://, which fills,
#    drains and verifies the queues at loads of 10 to 10,000 jobs and prints latency/throughput.
#
# Afterwards: `. .venv/bin/activate` puts `unifiedq` and `python -c 'import unifiedq'` on PATH.
#
# Environment knobs:
#   PYTHON=python3     interpreter for the venv (3.11 or newer)
#   VENV=.venv         where the venv goes (relative to the checkout)
#   EXTRAS=shm         extras to install, e.g. EXTRAS=all for every driver
#   NO_APT=1           never call apt-get
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-shm}"

log() { printf '[quickstart.sh] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

can_apt() {
  [ "${NO_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1 \
    && { [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }
}

# ------------------------------------------------------------ system packages (Debian)
missing=()
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  missing+=(python3)
elif ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 || missing+=(gcc)
if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -c \
    'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))'; then
  missing+=(python3-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if can_apt; then
    log "installing from apt: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing: ${missing[*]} (not root and no passwordless sudo, or NO_APT=1): continuing"
  fi
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  log "ERROR: unifiedq needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"
  exit 1
fi

# ------------------------------------------------------------ venv + package
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
log "pip install '.[$EXTRAS]' into $VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q ".[$EXTRAS]"

impl="$("$VENV/bin/python" -c 'from unifiedq.drivers import _shm_atomics; print(_shm_atomics.IMPL)')"
if [ "$impl" = "c-ext" ]; then
  log "shm:// uses the compiled ring (c-ext)"
else
  log "shm:// uses the pure-Python path ($impl): no C compiler or Python headers at install time"
fi

# ------------------------------------------------------------ the main job
log "$VENV/bin/unifiedq bench $*"
exec "$VENV/bin/unifiedq" bench "$@"
