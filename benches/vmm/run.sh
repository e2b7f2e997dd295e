#!/bin/sh
# berth-vmm start-up and memory-overhead benchmark (results: benches/RESULTS.md).
# Builds the release VMM and the bench driver, then measures a 128 MiB guest
# with (1) a raw long-mode guest and (2) the Debian cloud bzImage that the
# vmm tests cache in /var/cache/berth (fetched by `cargo test -p berth-vmm
# --test linux_boot`).
set -eu
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-20}"
cargo build -q --release -p berth-vmm --bin berth-vmm --example vmm_bench
VMM=target/release/berth-vmm
BENCH=target/release/examples/vmm_bench
"$BENCH" --vmm "$VMM" --raw --runs "$RUNS" --mem-mib 128
KERNEL="$(ls /var/cache/berth/linux-image-*-cloud-amd64/vmlinuz 2>/dev/null | head -n1 || true)"
if [ -n "$KERNEL" ]; then
    "$BENCH" --vmm "$VMM" --kernel "$KERNEL" --runs "$RUNS" --mem-mib 128
else
    echo "no cached Debian kernel: run 'cargo test -p berth-vmm --test linux_boot' first" >&2
fi
