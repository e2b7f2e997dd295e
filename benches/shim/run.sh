#!/usr/bin/env bash
# `ctr run --rm IMAGE ID true` through containerd's runc shim (io.containerd.runc.v2) and
# the berth shim (io.containerd.berth.v2: process isolation, then a microVM), side by side
# on one private containerd (own root, state, sockets; nothing shared with a system one).
# Root. Usage: benches/shim/run.sh [RUNS]   (default 10; the microVM mode runs RUNS/2)
# Uses $CARGO_TARGET_DIR (default target/) debug binaries; PROFILE=release for release.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-10}
PROFILE=${PROFILE:-debug}
if [ "$PROFILE" = release ]; then
  cargo build -q --release -p berth-shim -p berth-agent
else
  cargo build -q -p berth-shim -p berth-agent
fi
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/$PROFILE")

D=$(mktemp -d /tmp/bshim-bench.XXXXXX)
cleanup() {
  for id in $(ctr --address "$D/c.sock" -n bench task ls -q 2>/dev/null); do
    ctr --address "$D/c.sock" -n bench task rm -f "$id" >/dev/null 2>&1 || true
  done
  [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null || true
  grep " $D/" /proc/self/mounts | awk '{print $2}' | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

cat > "$D/config.toml" <<EOF
version = 2
root = "$D/root"
state = "$D/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$D/c.sock"
[ttrpc]
  address = "$D/c.sock.ttrpc"
[debug]
  address = "$D/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/opt"
EOF
PATH="$BIN:$PATH" BERTH_SHIM_STATE="$D/shim" BERTH_SHIM_VMM=qemu \
  containerd --config "$D/config.toml" >"$D/containerd.log" 2>&1 &
CPID=$!
CTR=(ctr --address "$D/c.sock" -n bench)
for _ in $(seq 100); do "${CTR[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done

# A one-layer static busybox image (README: "A first container without internet access").
I="$D/img"
mkdir -p "$I/rootfs/bin" "$I/rootfs/etc" "$I/rootfs/tmp" "$I/rootfs/proc" "$I/rootfs/sys" "$I/rootfs/dev"
cp "$(command -v busybox)" "$I/rootfs/bin/"
for a in $("$I/rootfs/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$I/rootfs/bin/$a"; done
tar -C "$I/rootfs" -cf "$I/layer.tar" .
L=$(sha256sum "$I/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$L" >"$I/config.json"
C=$(sha256sum "$I/config.json" | cut -d' ' -f1)
mv "$I/config.json" "$I/$C.json"
printf '[{"Config":"%s.json","RepoTags":["bench/busybox:latest"],"Layers":["layer.tar"]}]' "$C" >"$I/manifest.json"
tar -C "$I" -cf "$D/bb.tar" layer.tar "$C.json" manifest.json
"${CTR[@]}" image import "$D/bb.tar" >/dev/null
IMG=docker.io/bench/busybox:latest

# Milliseconds of one `ctr run --rm ... true`.
one() {
  local t0 t1
  t0=$(date +%s%N)
  "${CTR[@]}" run --rm --fifo-dir "$D/fifo" --runtime "$1" $2 "$IMG" "b$RANDOM$RANDOM" true >/dev/null
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A ARGS=(
  [runc]="io.containerd.runc.v2|"
  [berth-process]="io.containerd.berth.v2|"
  [berth-microvm]="io.containerd.berth.v2|--annotation io.berth.isolation=microvm"
)
echo "| runtime | runs | median ms | min ms | max ms |"
echo "|---|---|---|---|---|"
for name in runc berth-process berth-microvm; do
  IFS='|' read -r rt extra <<<"${ARGS[$name]}"
  n=$RUNS
  [ "$name" = berth-microvm ] && n=$(((RUNS + 1) / 2))
  one "$rt" "$extra" >/dev/null # warm-up: page cache, image disk cache
  ts=$(for _ in $(seq "$n"); do one "$rt" "$extra"; done)
  echo "| $name | $n | $(echo "$ts" | median) | $(echo "$ts" | sort -n | head -1) | $(echo "$ts" | sort -n | tail -1) |"
done
