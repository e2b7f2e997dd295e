#!/usr/bin/env bash
# Build every plugin crate in plugins/drivers to wasm32-wasip2 and stage
# <out>/<name>/{plugin.wasm,manifest.toml} for each crate that has a manifest.toml.
#
# Uses rustup's wasm32-wasip2 target when installed; otherwise Debian's rustc-web
# toolchain with -Zbuild-std, installing the
# apt packages only when missing. Idempotent; a second run is a no-op cargo build.
#
# usage: scripts/build-plugins.sh [--out DIR] [--debug]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRIVERS="$ROOT/plugins/drivers"
OUT="$ROOT/target/plugins"
PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        --debug) PROFILE=debug; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build-plugins: unknown argument $1" >&2; exit 2 ;;
    esac
done

TARGET=wasm32-wasip2
export CARGO_TARGET_DIR="$DRIVERS/target"
PROFILE_FLAG=()
[ "$PROFILE" = release ] && PROFILE_FLAG=(--release)

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    (cd "$DRIVERS" && cargo build "${PROFILE_FLAG[@]}" --target "$TARGET" --workspace)
else
    need=()
    for p in rustc-web cargo-web rust-web-src lld-22 wasi-libc; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "build-plugins: installing ${need[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${need[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
    fi
    # wasm32-wasip2 links through wasm-component-ld, which rustup's host toolchain ships.
    HOST_RUSTC="$(command -v rustc || true)"
    if [ -n "$HOST_RUSTC" ] && [ "$HOST_RUSTC" != /usr/bin/rustc ]; then
        LD_DIR="$("$HOST_RUSTC" --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
        export PATH="$PATH:$LD_DIR"
    fi
    command -v wasm-component-ld >/dev/null || { echo "build-plugins: wasm-component-ld not found (needs rustup's host toolchain)" >&2; exit 1; }
    # Debian's toolchain: call it by full path so rustup's cargo on PATH is not used.
    (cd "$DRIVERS" && env -u RUSTUP_TOOLCHAIN RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
        RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
        /usr/bin/cargo build "${PROFILE_FLAG[@]}" -Zbuild-std=std,panic_abort --target "$TARGET" --workspace)
fi

mkdir -p "$OUT"
count=0
for manifest in "$DRIVERS"/*/manifest.toml; do
    crate_dir="$(dirname "$manifest")"
    crate="$(basename "$crate_dir")"
    name="$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$manifest" | head -1)"
    wasm="$CARGO_TARGET_DIR/$TARGET/$PROFILE/${crate//-/_}.wasm"
    [ -f "$wasm" ] || { echo "build-plugins: missing $wasm" >&2; exit 1; }
    mkdir -p "$OUT/$name"
    if ! cmp -s "$wasm" "$OUT/$name/plugin.wasm"; then
        cp "$wasm" "$OUT/$name/plugin.wasm.tmp" && mv "$OUT/$name/plugin.wasm.tmp" "$OUT/$name/plugin.wasm"
    fi
    # Replaced, never written in place: a berthd reading it sees the old or the new file.
    cmp -s "$manifest" "$OUT/$name/manifest.toml" || { cp "$manifest" "$OUT/$name/manifest.toml.tmp" && mv "$OUT/$name/manifest.toml.tmp" "$OUT/$name/manifest.toml"; }
    count=$((count + 1))
done
# Authorization plugins (berth:authz world) carry authz.toml instead of manifest.toml:
# they are chosen with --authorization-plugin, never loaded as drivers.
for manifest in "$DRIVERS"/*/authz.toml; do
    crate="$(basename "$(dirname "$manifest")")"
    name="$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$manifest" | head -1)"
    wasm="$CARGO_TARGET_DIR/$TARGET/$PROFILE/${crate//-/_}.wasm"
    [ -f "$wasm" ] || { echo "build-plugins: missing $wasm" >&2; exit 1; }
    mkdir -p "$OUT/$name"
    cmp -s "$wasm" "$OUT/$name/plugin.wasm" || { cp "$wasm" "$OUT/$name/plugin.wasm.tmp" && mv "$OUT/$name/plugin.wasm.tmp" "$OUT/$name/plugin.wasm"; }
    cmp -s "$manifest" "$OUT/$name/authz.toml" || { cp "$manifest" "$OUT/$name/authz.toml.tmp" && mv "$OUT/$name/authz.toml.tmp" "$OUT/$name/authz.toml"; }
    count=$((count + 1))
done
echo "build-plugins: $count plugins in $OUT" >&2
