#!/usr/bin/env bash
# Installs the Debian packages berth's build, daemon and test suite use. Idempotent:
# only missing packages are installed, and apt's lists are refreshed only then.
set -euo pipefail

PKGS=(
  busybox-static   # test images (no network: images are built from it)
  containerd       # containerd 1.6 + ctr: the shim tests (host/shim) start their own
  docker-registry  # a real OCI registry on 127.0.0.1 for pull/push tests
  docker.io        # reference dockerd 20.10 + runc for benches
  qemu-system-x86  # guest kernel + agent tests under TCG
  skopeo           # OCI layout interop tests
  lz4 util-linux   # vmm tests: Debian kernel unpacking, unshare
  cpio curl file iproute2 e2fsprogs tar xz-utils zstd bc python3
  openssl          # the TLS API test makes its CA and certificates with it
  docker-compose   # compose 1.29 (the Python one) for the compose example app tests
  nftables         # berthd's NAT and port publishing (nft -j), networking tests
  iperf3           # benches/network: TCP throughput
  erofs-utils      # microVM image disks (mkfs.erofs); ext4 via e2fsprogs otherwise
  rustc-web cargo-web rust-web-src lld-22 wasi-libc   # wasm32-wasip2 plugin builds (scripts/build-plugins.sh)
)
# Extra packages named by callers: scripts/install-deps.sh pkg...
PKGS+=("$@")

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker.io would start its own dockerd through systemd/init; we only want the binaries.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# docker-py (the Python SDK), pinned: the conformance tests drive berthd with it too.
DOCKER_PY_VERSION=7.1.0
if ! python3 -c "import docker, sys; sys.exit(docker.__version__ != '$DOCKER_PY_VERSION')" 2>/dev/null; then
  echo "install-deps: installing docker-py $DOCKER_PY_VERSION" >&2
  python3 -m pip install -q "docker==$DOCKER_PY_VERSION"
fi
