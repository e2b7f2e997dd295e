#!/usr/bin/env bash
# Builds berth's guest kernel (vmlinux + bzImage) from Debian's linux-source-6.1:
# `make tinyconfig`, then berth.config merged with scripts/kconfig/merge_config.sh.
#
#   guest-kernel/build.sh [--out DIR] [--cache DIR] [--jobs N]
#
# Outputs are cached under $CACHE/out/<key>/ where <key> hashes the source package version,
# berth.config and this script, so a second run with the same inputs only prints the path.
# The source tree and the (incremental) build tree also live in $CACHE, outside the clone.
# The last line on stdout is the path of vmlinux (bzImage and config sit next to it);
# everything else goes to stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT=$HERE/berth.config
CACHE=${BERTH_GUEST_KERNEL_CACHE:-/var/cache/berth/guest-kernel}
OUT=
JOBS=2
KEEP=3 # cached outputs kept
SRC_PKG=linux-source-6.1
PKGS=(linux-source-6.1 bc flex bison libelf-dev libssl-dev gcc make xz-utils)

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
log() { echo "guest-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --cache) CACHE=${2:?--cache needs a directory}; shift 2 ;;
        --jobs) JOBS=${2:?--jobs needs a number}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) log "unknown argument $1"; usage ;;
    esac
done

# --- Packages -----------------------------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run as root or install them"
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi
SRC_VER=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
TARBALL=/usr/src/$SRC_PKG.tar.xz
[ -f "$TARBALL" ] || die "$TARBALL not found"

# --- Cache key ----------------------------------------------------------------------------
KEY=$({ echo "$SRC_PKG $SRC_VER"; cat "$FRAGMENT" "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
DEST=$CACHE/out/$KEY
mkdir -p "$CACHE/out"

publish() {
    if [ -n "$OUT" ]; then
        mkdir -p "$OUT"
        cp -f "$DEST/vmlinux" "$DEST/bzImage" "$DEST/config" "$DEST/build-info" "$OUT/"
        echo "$(cd "$OUT" && pwd)/vmlinux"
    else
        echo "$DEST/vmlinux"
    fi
}

if [ -f "$DEST/build-info" ]; then
    log "cached: $DEST ($SRC_PKG $SRC_VER, key $KEY)"
    publish
    exit 0
fi

# One build at a time per cache (the build tree is shared and incremental).
exec 9>"$CACHE/lock"
if ! flock -n 9; then
    log "waiting for another build in $CACHE"
    flock 9
fi
if [ -f "$DEST/build-info" ]; then # built by whoever held the lock
    log "cached: $DEST (built concurrently)"
    publish
    exit 0
fi

# --- Source tree (pristine, one per package version; builds go to a separate O= tree) ------
SRC=$CACHE/src/$SRC_PKG-$SRC_VER
if [ ! -f "$SRC/.unpacked" ]; then
    log "unpacking $TARBALL into $SRC"
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    nice -n 19 tar -xJf "$TARBALL" -C "$SRC.tmp" --strip-components=1
    touch "$SRC.tmp/.unpacked"
    mv "$SRC.tmp" "$SRC"
fi

BUILD=$CACHE/build/$SRC_PKG-$SRC_VER
mkdir -p "$BUILD"
LOG=$CACHE/build.log
: >"$LOG"
kmake() { nice -n 19 make -C "$SRC" O="$BUILD" ARCH=x86_64 "$@" >>"$LOG" 2>&1 ||
    { tail -n 40 "$LOG" >&2; die "make $* failed (full log: $LOG)"; }; }

start=$(date +%s)
log "configuring (tinyconfig + berth.config) in $BUILD"
kmake tinyconfig
# -m: merge only; olddefconfig below resolves dependencies the way the build will see them.
(cd "$BUILD" && ARCH=x86_64 nice -n 19 "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" \
    "$BUILD/.config" "$FRAGMENT" >>"$LOG" 2>&1) || die "merge_config.sh failed (log: $LOG)"
kmake olddefconfig

# Every option of the fragment must survive: Kconfig silently drops a symbol whose
# dependencies are off, and a kernel without e.g. VIRTIO_VSOCKETS boots but never answers.
dropped=()
while IFS= read -r line; do
    case $line in
        CONFIG_*=*) want=$line; sym=${line%%=*} ;;
        "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}; want="# $sym is not set" ;;
        *) continue ;;
    esac
    got=$(grep -E "^($sym=|# $sym is not set)" "$BUILD/.config" || true)
    if [ "$got" != "$want" ] && ! { [ -z "$got" ] && [ "${want#\# }" != "$want" ]; }; then
        dropped+=("$want (got: ${got:-absent})")
    fi
done <"$FRAGMENT"
if [ ${#dropped[@]} -gt 0 ]; then
    printf '  %s\n' "${dropped[@]}" >&2
    die "${#dropped[@]} option(s) of berth.config are not in the final .config (missing dependencies?)"
fi
log "config verified: every berth.config option is in .config"

log "building vmlinux + bzImage (nice -n 19 make -j$JOBS; log: $LOG)"
kmake -j"$JOBS" vmlinux bzImage
end=$(date +%s)

TMP=$DEST.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$BUILD/vmlinux" "$TMP/vmlinux"
cp "$BUILD/arch/x86/boot/bzImage" "$TMP/bzImage"
cp "$BUILD/.config" "$TMP/config"
cat >"$TMP/build-info" <<EOF
source=$SRC_PKG $SRC_VER
key=$KEY
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
seconds=$((end - start))
jobs=$JOBS
vmlinux_bytes=$(stat -c %s "$TMP/vmlinux")
bzimage_bytes=$(stat -c %s "$TMP/bzImage")
EOF
rm -rf "$DEST"
mv "$TMP" "$DEST"
log "built in $((end - start)) s: $DEST"
# Keep the newest few outputs; older keys (earlier berth.config revisions) are dead weight.
ls -1dt "$CACHE"/out/*/ | tail -n +"$((KEEP + 1))" | xargs -r rm -rf
publish
