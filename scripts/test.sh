#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is needed, builds the WASM
# plugins, then runs every crate's unit and integration tests (real berthd, real
# docker CLI, real KVM where it works, real wasmtime).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/build-plugins.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads "${BERTH_TEST_THREADS:-4}"
