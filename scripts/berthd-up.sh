#!/usr/bin/env bash
# One command from a fresh clone to a running berthd: installs what is needed,
# builds release binaries and plugins, and starts berthd in the foreground with its
# state under ./.berth/ . Point the docker CLI at the socket it prints.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/install-deps.sh
cargo build --release -p berthd -p berth-agent
bash scripts/build-plugins.sh

STATE=${BERTH_STATE:-$ROOT/.berth}
SOCK=${BERTH_SOCK:-/run/berth/berth.sock}
mkdir -p "$STATE"
echo "berthd: socket unix://$SOCK — use: export DOCKER_HOST=unix://$SOCK"
exec "$ROOT/target/release/berthd" \
  -H "unix://$SOCK" \
  --data-root "$STATE/data" \
  --exec-root "$STATE/run" \
  --pidfile "$STATE/berthd.pid" "$@"
