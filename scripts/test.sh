#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is needed, builds the WASM
# plugins, then runs every crate's unit and integration tests (real berthd, real
# docker CLI, real KVM where it works, real wasmtime).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/build-plugins.sh
cargo build --workspace --bins
# vhost-device-vsock and virtiofsd for the microVM tests (cached outside the clone).
bash scripts/install-vm-tools.sh

# The guest kernel plus the agent as PID 1 under qemu TCG (KVM here is PVM): busybox
# checks, the agent listening on vsock, and a protocol handshake over hybrid vsock.
# The kernel build is cached outside the clone, keyed by its inputs. One retry: a
# TCG boot on a loaded 2-core machine has timed out once in ~45 runs.
# It runs before `cargo test` because it also provides what the microVM integration
# tests (host/daemon/tests/microvm.rs) need: the guest kernel and vhost-device-vsock.
bash guest-kernel/test-boot.sh --install-vhost-vsock || {
  echo "test-boot: retrying once" >&2
  bash guest-kernel/test-boot.sh --install-vhost-vsock
}

status=0
cargo test --workspace --no-fail-fast -- --test-threads "${BERTH_TEST_THREADS:-4}" || status=$?

# The container suite again, every container in a microVM (qemu/TCG here). Tests that
# cannot apply to a microVM say so and skip.
BERTH_TEST_ISOLATION=microvm cargo test -p berthd --test containers -- --test-threads 2 || status=$?
# And the networking suite: microVM NICs on TAPs joined to the sandbox's veths.
BERTH_TEST_ISOLATION=microvm cargo test -p berthd --test network --test network_links --test network_ipv6 -- --test-threads 2 || status=$?

# Fixed-seed fuzz runs of the parsers of untrusted input (host/fuzz), about 5 minutes
# with the build: any crash fails the suite.
bash scripts/fuzz-smoke.sh || status=$?
exit $status
