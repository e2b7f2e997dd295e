#!/usr/bin/env bash
# docker load / docker pull / docker push of a multi-layer image: berthd vs Debian's
# dockerd 20.10, same machine, same registry, same image, one run.
#
#   benches/images/run.sh            (from the repo root; builds berthd --release first)
#   LAYERS=4 LAYER_MB=16 RUNS=3 BERTHD=target/release/berthd benches/images/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
LAYERS=${LAYERS:-4}
LAYER_MB=${LAYER_MB:-16}
RUNS=${RUNS:-3}
BERTHD=${BERTHD:-target/release/berthd}
DOCKER=${DOCKER:-/usr/local/bin/docker}
[ -x "$BERTHD" ] || cargo build --release -p berthd
command -v docker-registry >/dev/null || apt-get install -y -qq docker-registry
command -v dockerd >/dev/null || apt-get install -y -qq docker.io

W=$(mktemp -d /tmp/bimg.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  umount -R "$W/ref-data" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && DOCKER_HOST=unix://$1 $DOCKER version >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no daemon at $1" >&2; exit 1; }
now() { date +%s.%N; }

PORT=$(free_port)
REPO=127.0.0.1:$PORT/bench/multi
bytes=$(python3 benches/images/mkimage.py "$W/img.tar" "$REPO:1" "$LAYERS" "$LAYER_MB")
echo "image: $((LAYERS + 1)) layers, $((bytes / 1000000)) MB uncompressed" >&2

cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/reg}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 & PIDS+=($!)
# A second, empty registry for first-push timings (no blob there yet, no cross-repo mounts).
PORT2=$(free_port)
sed -e "s|$W/reg|$W/reg2|" -e "s|:$PORT|:$PORT2|" "$W/reg.yml" > "$W/reg2.yml"
docker-registry serve "$W/reg2.yml" >"$W/reg2.log" 2>&1 & PIDS+=($!)

"$BERTHD" -H "unix://$W/berth.sock" --data-root "$W/berth-data" --exec-root "$W/berth-run" \
  --pidfile "$W/berth.pid" >"$W/berthd.log" 2>&1 & PIDS+=($!)
dockerd -H "unix://$W/ref.sock" --data-root "$W/ref-data" --exec-root "$W/ref-exec" --pidfile "$W/ref.pid" \
  --iptables=false --ip-masq=false --bridge=none --storage-driver=overlay2 >"$W/dockerd.log" 2>&1 & PIDS+=($!)
wait_sock "$W/berth.sock"
wait_sock "$W/ref.sock"

# Seed the registry once (from dockerd: its gzip layers are what a real registry holds).
DOCKER_HOST=unix://$W/ref.sock $DOCKER load -q -i "$W/img.tar" >/dev/null
DOCKER_HOST=unix://$W/ref.sock $DOCKER push -q "$REPO:1" >/dev/null
DOCKER_HOST=unix://$W/ref.sock $DOCKER rmi -f "$REPO:1" >/dev/null

declare -A RES
for who in berthd dockerd; do
  sock=$W/berth.sock; [ $who = dockerd ] && sock=$W/ref.sock
  export DOCKER_HOST=unix://$sock
  for r in $(seq "$RUNS"); do
    $DOCKER rmi -f "$REPO:1" >/dev/null 2>&1 || true
    t0=$(now); $DOCKER load -q -i "$W/img.tar" >/dev/null; t1=$(now)
    RES[$who,load]+="$(echo "$t1 - $t0" | bc) "
    t0=$(now); $DOCKER push -q "$REPO:1" >/dev/null; t1=$(now)   # layers already in the registry
    RES[$who,push]+="$(echo "$t1 - $t0" | bc) "
    $DOCKER rmi -f "$REPO:1" >/dev/null
    t0=$(now); $DOCKER pull -q "$REPO:1" >/dev/null; t1=$(now)
    RES[$who,pull]+="$(echo "$t1 - $t0" | bc) "
  done
  # First push of the image into an empty registry: compress + upload every layer.
  $DOCKER tag "$REPO:1" "127.0.0.1:$PORT2/$who:1"
  t0=$(now); $DOCKER push -q "127.0.0.1:$PORT2/$who:1" >/dev/null; t1=$(now)
  RES[$who,push-fresh]="$(echo "$t1 - $t0" | bc)"
  $DOCKER rmi -f "$REPO:1" "127.0.0.1:$PORT2/$who:1" >/dev/null 2>&1 || true
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {printf "%.2f", (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
echo "| operation ($((LAYERS + 1)) layers, $((bytes / 1000000)) MB, median of $RUNS) | berthd (s) | dockerd 20.10 overlay2 (s) |"
echo "|---|---|---|"
for op in load pull push push-fresh; do
  echo "| docker $op | $(echo "${RES[berthd,$op]}" | median) | $(echo "${RES[dockerd,$op]}" | median) |"
done
echo
echo "raw: $(for k in "${!RES[@]}"; do echo -n "$k=[${RES[$k]}] "; done)"
