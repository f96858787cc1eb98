#!/usr/bin/env bash
# Provision a Debian 12 machine (as root) for unifiedq development and tests:
#   * redis-server and rabbitmq-server from Debian's packages,
#   * the Faktory server, built from its Go module (pinned below),
#   * Toxiproxy's server (fault injection for the fault matrix), from its Go module,
#   * the Python package itself in editable mode with the dev extras.
# Idempotent: every step is skipped when its result is already present.
# The tests start their own private servers on free loopback ports, so any
# system service that the packages start is stopped again.
#
# Environment knobs:
#   PYTHON=python3           interpreter used for `pip install -e .[dev]`
#   FAKTORY_BIN_DIR=/usr/local/bin   where the faktory binary is installed
#   FAKTORY_FORCE_BUILD=1    rebuild faktory even if a 1.9.x binary is on PATH
#   TOXIPROXY_FORCE_BUILD=1  rebuild toxiproxy-server even if a 2.5.x binary is on PATH
#                            (installed into FAKTORY_BIN_DIR as well)
#   SKIP_PIP=1               skip the pip step
set -euo pipefail

FAKTORY_VERSION="v1.9.3"
FAKTORY_BIN_DIR="${FAKTORY_BIN_DIR:-/usr/local/bin}"
TOXIPROXY_VERSION="v2.5.0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/usr/local/go/bin"

log() { printf '[install.sh] %s\n' "$*"; }

now() { date +%s.%N; }

# step NAME FUNCTION: run FUNCTION and report how long it took.
step() {
  local name="$1" fn="$2" start end
  start="$(now)"
  log "==> ${name}"
  "$fn"
  end="$(now)"
  STEP_TIMES+=("$(awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN{printf "%-28s %7.1f s", n, b - a}')")
  log "<== ${name} done in $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b - a}') s"
}
STEP_TIMES=()

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ---------------------------------------------------------------- Debian packages

stop_system_services() {
  # Our tests run their own brokers; don't let the distribution's occupy ports.
  as_root service rabbitmq-server stop >/dev/null 2>&1 || true
  as_root service redis-server stop >/dev/null 2>&1 || true
  # The system broker and redis run as their own users; ours run as the caller.
  as_root pkill -u rabbitmq -f beam.smp 2>/dev/null || true
  as_root pkill -u redis -x redis-server 2>/dev/null || true
  # The system epmd listens on the default port 4369 (the rig uses other ports).
  ERL_EPMD_PORT=4369 epmd -kill >/dev/null 2>&1 || true
  as_root pkill -u rabbitmq -x epmd 2>/dev/null || true
}

install_debian_packages() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # RedisClusterRig joins its nodes with redis-cli --cluster create.
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
  # The shm:// driver's compiled fast path (src/unifiedq/drivers/_shmring.c) is built by pip.
  command -v gcc >/dev/null 2>&1 || missing+=(gcc)
  # tests/test_dashboard_browser.py drives Debian's Chromium (no browser download).
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  if [ "${#missing[@]}" -eq 0 ]; then
    log "redis-server, rabbitmq-server, gcc and chromium already installed; skipping apt-get"
    return 0
  fi
  log "installing: ${missing[*]}"
  # Keep dpkg from starting the services at all (the Debian container idiom);
  # only when no policy is in place already.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 0755 "$policy"
    added_policy=1
  fi
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
  if [ "$added_policy" -eq 1 ]; then
    as_root rm -f "$policy"
  fi
  stop_system_services
}

# ---------------------------------------------------------------- Faktory

faktory_ok() {
  local bin
  bin="$(command -v faktory 2>/dev/null)" || return 1
  "$bin" -v 2>&1 | grep -Eq "Faktory v?1\.9\."
}

install_faktory() {
  if [ "${FAKTORY_FORCE_BUILD:-0}" != "1" ] && faktory_ok; then
    log "$(command -v faktory): $(faktory -v 2>&1 | head -n1); skipping build"
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    log "ERROR: Go (>= 1.24) is needed to build Faktory ${FAKTORY_VERSION} but 'go' is not on PATH"
    return 1
  fi
  local build
  build="$(mktemp -d /tmp/uq-faktory-build.XXXXXX)"
  # `go install ...@version` fails here: the module proxy refuses the version list
  # (403 on @v/list while "loading deprecation"). Building from a pinned go.mod works.
  cat >"$build/go.mod" <<EOF
module fkbuild

go 1.24

require github.com/contribsys/faktory ${FAKTORY_VERSION}
EOF
  cat >"$build/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/contribsys/faktory/cmd/faktory"
EOF
  log "building Faktory ${FAKTORY_VERSION} with $(go version)"
  (cd "$build" && GOFLAGS="-mod=mod -buildvcs=false" go build -o "$build/faktory" \
    github.com/contribsys/faktory/cmd/faktory)
  as_root install -d "$FAKTORY_BIN_DIR"
  as_root install -m 0755 "$build/faktory" "$FAKTORY_BIN_DIR/faktory"
  rm -rf "$build"
  log "installed $("$FAKTORY_BIN_DIR/faktory" -v 2>&1 | head -n1) to $FAKTORY_BIN_DIR/faktory"
  if ! command -v redis-server >/dev/null 2>&1; then
    log "WARNING: Faktory needs redis-server on PATH at run time"
  fi
}

# ---------------------------------------------------------------- Toxiproxy

toxiproxy_ok() {
  local bin
  bin="$(command -v toxiproxy-server 2>/dev/null)" || return 1
  "$bin" -version 2>&1 | grep -Eq "version v?2\.5\."
}

install_toxiproxy() {
  if [ "${TOXIPROXY_FORCE_BUILD:-0}" != "1" ] && toxiproxy_ok; then
    log "$(command -v toxiproxy-server): $(toxiproxy-server -version 2>&1 | head -n1); skipping build"
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    log "ERROR: Go is needed to build Toxiproxy ${TOXIPROXY_VERSION} but 'go' is not on PATH"
    return 1
  fi
  local build
  build="$(mktemp -d /tmp/uq-toxiproxy-build.XXXXXX)"
  # Only the server is needed (the tests talk to its HTTP API, not to the CLI).
  # `go install` leaves the version as "git"; stamp the real one so the check above works.
  log "building Toxiproxy ${TOXIPROXY_VERSION} with $(go version)"
  GOBIN="$build" GOFLAGS="-buildvcs=false" go install \
    -ldflags "-X github.com/Shopify/toxiproxy/v2.Version=${TOXIPROXY_VERSION}" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@${TOXIPROXY_VERSION}"
  as_root install -d "$FAKTORY_BIN_DIR"
  as_root install -m 0755 "$build/server" "$FAKTORY_BIN_DIR/toxiproxy-server"
  rm -rf "$build"
  log "installed $("$FAKTORY_BIN_DIR/toxiproxy-server" -version 2>&1 | head -n1) to $FAKTORY_BIN_DIR/toxiproxy-server"
}

# ---------------------------------------------------------------- Python package

install_python_package() {
  if [ "${SKIP_PIP:-0}" = "1" ]; then
    log "SKIP_PIP=1; skipping pip"
    return 0
  fi
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    if command -v python >/dev/null 2>&1; then py=python; else py=python3; fi
  fi
  (cd "$REPO_ROOT" && "$py" -m pip install --disable-pip-version-check -e ".[dev]")
}

# ---------------------------------------------------------------- main

TOTAL_START="$(now)"
step "debian packages" install_debian_packages
step "faktory ${FAKTORY_VERSION}" install_faktory
step "toxiproxy ${TOXIPROXY_VERSION}" install_toxiproxy
step "pip install -e .[dev]" install_python_package
TOTAL_END="$(now)"

log "step timings:"
for line in "${STEP_TIMES[@]}"; do
  log "  $line"
done
log "  $(awk -v a="$TOTAL_START" -v b="$TOTAL_END" 'BEGIN{printf "%-28s %7.1f s", "total", b - a}')"
