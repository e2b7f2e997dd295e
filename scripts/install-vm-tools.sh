#!/usr/bin/env bash
# Installs the vhost-user daemons the microVM isolation uses with the qemu backend, built
# from crates.io into /var/cache/berth/tools/bin (outside the clone; a second run with the
# same versions does nothing):
#   vhost-device-vsock  rust-vmm's vhost-user vsock device: the host<->agent channel
#   virtiofsd           the Rust virtio-fs daemon: bind mounts and directory volumes
# berthd finds them there, on $PATH, or through $BERTH_VHOST_VSOCK / $BERTH_VIRTIOFSD.
set -euo pipefail

ROOT=${BERTH_TOOLS:-/var/cache/berth/tools}
TOOLS=(
  "vhost-device-vsock 0.3.0"
  "virtiofsd 1.14.0"
)
# virtiofsd links libseccomp and libcap-ng.
bash "$(dirname "$0")/install-deps.sh" libseccomp-dev libcap-ng-dev pkg-config

for t in "${TOOLS[@]}"; do
  read -r name version <<<"$t"
  stamp=$ROOT/.installed-$name-$version
  if [ -x "$ROOT/bin/$name" ] && [ -f "$stamp" ]; then
    continue
  fi
  if [ -x "$ROOT/bin/$name" ] && "$ROOT/bin/$name" --version 2>/dev/null | grep -q "$version"; then
    touch "$stamp"
    continue
  fi
  echo "install-vm-tools: building $name $version into $ROOT (cargo, crates.io)" >&2
  CARGO_TARGET_DIR=$ROOT/target nice -n 19 cargo install --locked -q \
    --root "$ROOT" "$name" --version "$version" >&2
  touch "$stamp"
done
