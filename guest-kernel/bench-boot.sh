#!/usr/bin/env bash
# Boot-time benchmark under qemu TCG: runs test-boot.sh RUNS times (default 5) and prints the
# median and range of each `boot-time` figure it reports.
#
#   guest-kernel/bench-boot.sh [RUNS] [test-boot.sh args...]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUNS=${1:-5}
shift || true
KERNEL=$("$HERE/build.sh" | tail -n 1)
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
for i in $(seq "$RUNS"); do
    "$HERE/test-boot.sh" --kernel "$KERNEL" "$@" 2>"$err" >>"$out" ||
        { tail -n 40 "$err" >&2; echo "run $i failed" >&2; exit 1; }
done
# Each figure: "<label> <value> ms|s" pairs on the boot-time lines.
python3 - "$out" "$RUNS" <<'PY'
import re, statistics, sys
vals = {}
for line in open(sys.argv[1]):
    if not line.startswith("boot-time "):
        continue
    kind, rest = line[len("boot-time "):].split(":", 1)
    for label, v, unit in re.findall(r"([a-z>/ -]+?) ([0-9.]+) (ms|s)\b", rest):
        ms = float(v) * (1000 if unit == "s" else 1)
        vals.setdefault(f"{kind}: {label.strip().lstrip(', ')}", []).append(ms)
print(f"runs: {sys.argv[2]}")
for k, v in vals.items():
    print(f"{k}: median {statistics.median(v):.0f} ms (min {min(v):.0f}, max {max(v):.0f})")
PY
