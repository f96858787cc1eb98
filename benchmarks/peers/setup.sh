#!/usr/bin/env bash
# One-time setup for the peer benchmark (run.py installs nothing itself):
#   1. a venv at benchmarks/peers/.venv with this repo (editable, redis+amqp extras) and the
#      pinned peers from requirements.txt;
#   2. a second venv, benchmarks/peers/.venv-arq, for arq (it pins redis-py < 6, taskiq-redis
#      needs >= 8);
#   3. the Go asynq worker/producer in benchmarks/peers/asynq_go/, built with `go build`.
# Then: python benchmarks/peers/run.py   (unifiedq rows run under that interpreter)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

venv() {  # venv DIR pip-args...
    local dir="$1"; shift
    [ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet "$@"
    "$dir/bin/python" -m pip check || echo "warning: pip check found conflicts in $dir" >&2
}
venv "$here/.venv" -e "$repo[redis,amqp]" -r "$here/requirements.txt"
venv "$here/.venv-arq" -r "$here/requirements-arq.txt"

(cd "$here/asynq_go" && go build -o asynq_bench .)
echo "ready: python benchmarks/peers/run.py [--quick] [--systems ...]"
