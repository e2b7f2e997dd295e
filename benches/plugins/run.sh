#!/usr/bin/env bash
# Plugin benchmarks: json-file throughput (80 B and 1 KiB lines), plugin-boundary
# call overhead, instantiate time from the precompiled cache, component load time.
# usage: benches/plugins/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/build-plugins.sh --out target/plugins
# Thin LTO over wasmtime costs many minutes on 2 cores and changes little here.
CARGO_PROFILE_RELEASE_LTO=false cargo run --release -q -p berth-plugin-host --example plugin_bench -- target/plugins
