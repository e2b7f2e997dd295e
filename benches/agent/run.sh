#!/bin/sh
# Process-mode agent benchmarks (root; needs /bin/busybox). Builds release binaries first.
set -eu
cd "$(dirname "$0")/../.."
cargo build --release -p berth-agent --bins --examples
exec ./target/release/examples/agent_bench ./target/release/berth-agent "${1:-/tmp/berth-agent-bench}"
