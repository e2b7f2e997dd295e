#!/usr/bin/env bash
# Time from `berth-plugin new` to a container logging through the installed plugin
# (new, build, push to a loopback registry, docker plugin install, docker run
# --log-driver, docker logs shows the line): cold (empty wasm build cache) and warm
# (a new project, the build cache reused).
# usage: benches/plugins/sdk.sh   (needs docker-registry, busybox-static, the docker CLI)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
cargo build -q -p berthd -p berth-plugin -p berth-agent
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
[ -f "$BIN/plugins/json-file/plugin.wasm" ] || scripts/build-plugins.sh --out "$BIN/plugins"
WORK="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$WORK/registry" "$PORT" > "$WORK/registry.yml"
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
pids+=($!)
"$BIN/berthd" -H "unix://$WORK/berth.sock" --data-root "$WORK/data" --exec-root "$WORK/run" \
    >"$WORK/berthd.out" 2>"$WORK/berthd.log" &
pids+=($!)
export DOCKER_HOST="unix://$WORK/berth.sock"
for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
mkdir -p "$WORK/rootfs/bin"
cp /bin/busybox "$WORK/rootfs/bin/busybox"
for a in sh echo; do ln -s busybox "$WORK/rootfs/bin/$a"; done
tar -C "$WORK/rootfs" -cf "$WORK/bb.tar" .
docker import "$WORK/bb.tar" bb:bench >/dev/null

# One run: a fresh empty directory, plugin NAME, wasm build cache CACHE.
run() {
    local name="$1" cache="$2" dir="$WORK/$1"
    mkdir -p "$dir"
    local t0; t0=$(date +%s.%N)
    (cd "$dir" && "$BIN/berth-plugin" new --kind log "$name" >/dev/null)
    (cd "$dir/$name" && CARGO_TARGET_DIR="$cache" "$BIN/berth-plugin" build >/dev/null 2>&1)
    (cd "$dir/$name" && "$BIN/berth-plugin" push "127.0.0.1:$PORT/$name:1" >/dev/null)
    docker plugin install "127.0.0.1:$PORT/$name:1" >/dev/null
    local id; id=$(docker run -d --log-driver "$name" bb:bench echo "hello from $name")
    until [ "$(docker logs "$id" 2>/dev/null)" = "hello from $name" ]; do sleep 0.05; done
    local t1; t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.1f}')"
}

cold=$(run cold-log "$WORK/cache")
warm=$(run warm-log "$WORK/cache")
echo "berth-plugin new -> container logging through it: cold ${cold} s, warm ${warm} s"
