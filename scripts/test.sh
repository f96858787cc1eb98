#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
# Provisions what the tests need (idempotent), then runs every quality gate:
# ruff, mypy --strict (src, tests, examples, benchmarks), pytest (servers included), mkdocs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PATH="$PATH:/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin"

t0=$(date +%s)
bash scripts/install.sh
t1=$(date +%s)
echo "[test.sh] provisioning took $((t1 - t0)) s"

echo "[test.sh] ruff"
"$PYTHON" -m ruff check src tests examples benchmarks
echo "[test.sh] mypy --strict"
"$PYTHON" -m mypy
export NO_MKDOCS_2_WARNING=1
echo "[test.sh] mkdocs build --strict"
"$PYTHON" -m mkdocs build --strict --site-dir "$(mktemp -d)" -q
echo "[test.sh] pytest"
# Not `slow`: long soaks run from benchmarks/ or with `-m slow`.
"$PYTHON" -m pytest -m "not slow" -p no:cacheprovider -q -ra "$@"
t2=$(date +%s)
echo "[test.sh] checks and tests took $((t2 - t1)) s"
