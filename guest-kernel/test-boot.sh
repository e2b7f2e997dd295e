#!/usr/bin/env bash
# Boots berth's guest kernel under qemu TCG (software CPU: this host's KVM is PVM and cannot run
# a full Linux guest) on the microvm machine with virtio-mmio devices, and checks from inside
# the guest that what the agent needs is really there.
#
#   guest-kernel/test-boot.sh [--kernel VMLINUX] [--agent BIN | --no-agent] [--timeout SECS]
#                             [--vhost-vsock BIN | --install-vhost-vsock]
#
# Stage 1: busybox /init prints markers (filesystems, virtio drivers, ext4 + EROFS disks on
#          virtio-blk, virtio-net NIC, cgroup2 controllers, namespaces, overlay whiteouts,
#          seccomp filter, devpts, mqueue), then `reboot -f` (reboot=t + -no-reboot ends qemu).
# Stage 2: the static berth-agent as PID 1 (default: target/debug/berth-agent if built):
#          it must mount its filesystems without warnings and listen on vsock.
# Stage 3: (if vhost-device-vsock is installed, or with --install-vhost-vsock: cargo install
#          into /var/cache/berth/tools, ~2 min once) a virtio-vsock device: the host connects with
#          hybrid-vsock `CONNECT 1024`, does the agent protocol handshake (agent_pid 1) and
#          sends Shutdown; the agent's reboot(2) must end qemu.
# Exit status 0 only if every marker was seen. Times are printed as `boot-time ...` lines.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
KERNEL=
AGENT=auto
TIMEOUT=${BERTH_BOOT_TIMEOUT:-180}
VHOST_VSOCK=
INSTALL_VHOST=0

while [ $# -gt 0 ]; do
    case $1 in
        --kernel) KERNEL=${2:?}; shift 2 ;;
        --agent) AGENT=${2:?}; shift 2 ;;
        --no-agent) AGENT=; shift ;;
        --timeout) TIMEOUT=${2:?}; shift 2 ;;
        --vhost-vsock) VHOST_VSOCK=${2:?}; shift 2 ;;
        --install-vhost-vsock) INSTALL_VHOST=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { echo "test-boot: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v cpio >/dev/null || need+=(cpio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx unshare || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi
# Debian's busybox (dynamic) does not run in an initramfs without its libraries.
file -L /bin/busybox | grep -q "statically linked" || fail "/bin/busybox is not static (install busybox-static)"

if [ -z "$KERNEL" ]; then
    KERNEL=$("$HERE/build.sh" | tail -n 1)
fi
[ -f "$KERNEL" ] || fail "kernel $KERNEL not found"
log "kernel: $KERNEL"

WORK=$(mktemp -d /tmp/berth-test-boot.XXXXXX)
QEMU_PID=
VHOST_PID=
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true
    [ -n "$VHOST_PID" ] && kill "$VHOST_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# qemu microvm without ACPI: our kernel has no ACPI, so qemu appends virtio_mmio.device=...
# for every -device to the command line (auto-kernel-cmdline), which VIRTIO_MMIO_CMDLINE_DEVICES
# parses.
MACHINE=microvm,x-option-roms=off,rtc=off,acpi=off
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -m 256 -smp 1 -M "$MACHINE"
    -nographic -no-reboot -kernel "$KERNEL")
APPEND="console=ttyS0 panic=-1 reboot=t quiet no_timer_check"

# run_qemu OUTFILE DONE_REGEX ARGS...: runs qemu until it exits or DONE_REGEX appears (then
# kills it); sets ELAPSED_MS and QEMU_STATUS.
run_qemu() {
    local out=$1 done_re=$2
    shift 2
    local start end deadline
    start=$(now_ms)
    deadline=$((start + TIMEOUT * 1000))
    "${QEMU[@]}" "$@" </dev/null >"$out" 2>&1 &
    QEMU_PID=$!
    QEMU_STATUS=running
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        if [ -n "$done_re" ] && grep -qE "$done_re" "$out"; then
            kill "$QEMU_PID" 2>/dev/null || true
            QEMU_STATUS=killed-after-marker
            break
        fi
        if [ "$(now_ms)" -gt "$deadline" ]; then
            kill "$QEMU_PID" 2>/dev/null || true
            QEMU_STATUS=timeout
            break
        fi
        sleep 0.05
    done
    end=$(now_ms)
    if [ "$QEMU_STATUS" = running ]; then
        wait "$QEMU_PID" && QEMU_STATUS=exited-0 || QEMU_STATUS="exited-$?"
    else
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=
    ELAPSED_MS=$((end - start))
}

# ---------------------------------------------------------------------------------------------
# Stage 1: busybox init
# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK/initrd"/{bin,dev,proc,sys,mnt,tmp} "$WORK/ext4" "$WORK/erofs"
cp /bin/busybox "$WORK/initrd/bin/busybox"
mknod -m 600 "$WORK/initrd/dev/console" c 5 1
echo "berth ext4 payload" >"$WORK/ext4/payload"
echo "berth erofs payload" >"$WORK/erofs/payload"
mkfs.ext4 -q -F -d "$WORK/ext4" "$WORK/disk.ext4" 8M >/dev/null
mkfs.erofs "$WORK/disk.erofs" "$WORK/erofs" >/dev/null

cat >"$WORK/initrd/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "BERTH-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
for fs in overlay ext4 erofs tmpfs devtmpfs cgroup2 mqueue devpts; do
    grep -qw "$fs" /proc/filesystems && echo "BERTH-FS-$fs"
done
[ -d /sys/bus/virtio ] && echo BERTH-VIRTIO-BUS
for d in /sys/bus/virtio/drivers/*; do echo "BERTH-DRIVER-${d##*/}"; done
for dev in /dev/vd?; do
    mkdir -p /mnt/${dev##*/}
    for t in ext4 erofs; do
        if mount -t $t -o ro $dev /mnt/${dev##*/} 2>/dev/null; then
            grep -q "berth $t payload" /mnt/${dev##*/}/payload && echo "BERTH-MOUNT-$t"
            umount /mnt/${dev##*/}
            break
        fi
    done
done
[ -e /sys/class/net/eth0 ] && echo BERTH-NET-eth0
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup &&
    echo "BERTH-CGROUP2 $(cat /sys/fs/cgroup/cgroup.controllers)"
mkdir /sys/fs/cgroup/t && [ -e /sys/fs/cgroup/t/cgroup.freeze ] && echo BERTH-CGROUP-FREEZE
[ "$(unshare -m -u -i -n -p -f sh -c 'echo $$')" = 1 ] && echo BERTH-NS-PID1
[ "$(unshare -U -r id -u)" = 0 ] && echo BERTH-NS-USER
mount -t tmpfs tmpfs /tmp && mkdir -p /tmp/l /tmp/u /tmp/w /tmp/m && echo x >/tmp/l/f &&
    mount -t overlay overlay -o lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w /tmp/m &&
    rm /tmp/m/f && [ -c /tmp/u/f ] && [ ! -e /tmp/m/f ] && echo BERTH-OVERLAY-WHITEOUT
grep -q kill_process /proc/sys/kernel/seccomp/actions_avail 2>/dev/null && echo BERTH-SECCOMP-FILTER
mkdir -p /dev/pts /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && [ -c /dev/pts/ptmx ] && echo BERTH-DEVPTS
mount -t mqueue mqueue /dev/mqueue && echo BERTH-MQUEUE
echo "BERTH-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
reboot -f
EOF
chmod +x "$WORK/initrd/init"
(cd "$WORK/initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"

NET=()
if qemu-system-x86_64 -netdev help 2>/dev/null | grep -qx user; then
    NET=(-netdev user,id=n0 -device virtio-net-device,netdev=n0)
fi
run_qemu "$WORK/stage1.log" "" -initrd "$WORK/initrd.gz" -append "$APPEND" \
    -drive id=d0,file="$WORK/disk.ext4",format=raw,if=none,readonly=on -device virtio-blk-device,drive=d0 \
    -drive id=d1,file="$WORK/disk.erofs",format=raw,if=none,readonly=on -device virtio-blk-device,drive=d1 \
    "${NET[@]}"
tr -d '\r' <"$WORK/stage1.log" >"$WORK/stage1.txt"
sed 's/^/  guest| /' "$WORK/stage1.txt" >&2

want=(BERTH-INIT BERTH-FS-overlay BERTH-FS-ext4 BERTH-FS-erofs BERTH-FS-tmpfs BERTH-FS-devtmpfs
    BERTH-FS-cgroup2 BERTH-FS-mqueue BERTH-FS-devpts BERTH-VIRTIO-BUS BERTH-DRIVER-virtio_blk
    BERTH-DRIVER-virtio_net BERTH-DRIVER-vmw_vsock_virtio_transport BERTH-MOUNT-ext4
    BERTH-MOUNT-erofs BERTH-CGROUP-FREEZE BERTH-NS-PID1 BERTH-NS-USER BERTH-OVERLAY-WHITEOUT
    BERTH-SECCOMP-FILTER BERTH-DEVPTS BERTH-MQUEUE BERTH-DONE)
[ ${#NET[@]} -gt 0 ] && want+=(BERTH-NET-eth0)
missing=()
for m in "${want[@]}"; do grep -qE "^$m( |$)" "$WORK/stage1.txt" || missing+=("$m"); done
controllers=$(sed -n 's/^BERTH-CGROUP2 //p' "$WORK/stage1.txt")
for c in cpuset cpu memory pids; do
    echo " $controllers " | grep -q " $c " || missing+=("cgroup2 controller $c")
done
[ "$QEMU_STATUS" = exited-0 ] || missing+=("qemu exit after reboot -f (status $QEMU_STATUS)")
[ ${#missing[@]} -eq 0 ] || fail "stage 1 missing: ${missing[*]}"
init_up=$(sed -n 's/^BERTH-INIT uptime=//p' "$WORK/stage1.txt")
log "stage 1 ok: ${#want[@]} markers, cgroup2 controllers: $controllers"
echo "boot-time busybox: qemu start->exit ${ELAPSED_MS} ms, guest uptime at /init ${init_up} s"

# ---------------------------------------------------------------------------------------------
# Stage 2: the agent as PID 1
# ---------------------------------------------------------------------------------------------
if [ "$AGENT" = auto ]; then
    AGENT=$ROOT/target/debug/berth-agent
    [ -x "$AGENT" ] || { log "stage 2 skipped: $AGENT not built (cargo build -p berth-agent)"; exit 0; }
fi
[ -n "$AGENT" ] || exit 0
file -L "$AGENT" | grep -q "statically linked" || fail "$AGENT is not statically linked"
mkdir -p "$WORK/agent-initrd/dev"
mknod -m 600 "$WORK/agent-initrd/dev/console" c 5 1
# Debug builds carry ~50 MB of DWARF; the guest does not need it.
strip -o "$WORK/agent-initrd/init" "$AGENT"
(cd "$WORK/agent-initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/agent-initrd.gz"
# Kernel command-line words with '=' that the kernel does not know become init's environment.
run_qemu "$WORK/stage2.log" "listening on vsock|guest agent failed" \
    -initrd "$WORK/agent-initrd.gz" -append "$APPEND RUST_LOG=info berth.port=1024"
tr -d '\r' <"$WORK/stage2.log" >"$WORK/stage2.txt"
sed 's/^/  guest| /' "$WORK/stage2.txt" >&2
grep -q "guest agent listening on vsock" "$WORK/stage2.txt" ||
    fail "stage 2: the agent did not reach its vsock listener (qemu: $QEMU_STATUS)"
grep -q "port=1024" "$WORK/stage2.txt" || fail "stage 2: the agent did not read berth.port= from /proc/cmdline"
if grep -E "WARN|ERROR" "$WORK/stage2.txt" >&2; then
    fail "stage 2: the agent logged warnings as PID 1 (a kernel feature is missing?)"
fi
log "stage 2 ok: berth-agent is PID 1, mounted its filesystems and listens on vsock port 1024"
echo "boot-time agent: qemu start->vsock listening ${ELAPSED_MS} ms"

# ---------------------------------------------------------------------------------------------
# Stage 3: host -> agent over a real virtio-vsock device. There is no /dev/vhost-vsock here, so
# qemu's vhost-vsock-device cannot work; instead qemu's vhost-user-vsock-device is served by
# rust-vmm's vhost-device-vsock, which exposes the Firecracker-style hybrid vsock (a unix socket,
# `CONNECT <port>`) — the same host side berth's VMM provides. vhost-user needs guest RAM in a
# shared memfd.
# ---------------------------------------------------------------------------------------------
if [ -z "$VHOST_VSOCK" ]; then
    VHOST_VSOCK=$(command -v vhost-device-vsock || echo /var/cache/berth/tools/bin/vhost-device-vsock)
fi
if [ ! -x "$VHOST_VSOCK" ] && [ "$INSTALL_VHOST" = 1 ]; then
    log "installing vhost-device-vsock into /var/cache/berth/tools (cargo, crates.io)"
    CARGO_TARGET_DIR=/var/cache/berth/tools/target nice -n 19 cargo install --locked -j1 \
        --root /var/cache/berth/tools vhost-device-vsock >&2
    VHOST_VSOCK=/var/cache/berth/tools/bin/vhost-device-vsock
fi
if [ ! -x "$VHOST_VSOCK" ]; then
    log "stage 3 skipped: no vhost-device-vsock (rerun with --install-vhost-vsock)"
    exit 0
fi
"$VHOST_VSOCK" --guest-cid 3 --socket "$WORK/vhost.sock" --uds-path "$WORK/vm.vsock" \
    >"$WORK/vhost.log" 2>&1 &
VHOST_PID=$!
for _ in $(seq 100); do [ -S "$WORK/vhost.sock" ] && break; sleep 0.05; done
[ -S "$WORK/vhost.sock" ] || { cat "$WORK/vhost.log" >&2; fail "stage 3: vhost-device-vsock did not start"; }

cat >"$WORK/client.py" <<'PY'
import json, socket, struct, sys, time
path, deadline = sys.argv[1], time.time() + float(sys.argv[2])

def frame(kind, fid, obj):
    data = json.dumps(obj).encode()
    return struct.pack(">BII", kind, fid, len(data)) + data

def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf

def read_frame(s):
    kind, fid, n = struct.unpack(">BII", read_exact(s, 9))
    return kind, fid, json.loads(read_exact(s, n))

# The guest may still be booting: retry until its listener answers CONNECT with OK.
while True:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"CONNECT 1024\n")
        line = b""
        while not line.endswith(b"\n"):
            c = s.recv(1)
            if not c:
                raise EOFError("closed during CONNECT")
            line += c
        if line.startswith(b"OK "):
            break
        raise EOFError(line)
    except (OSError, EOFError):
        s.close()
        if time.time() > deadline:
            raise
        time.sleep(0.1)
print("vsock-connected", line.decode().strip(), flush=True)
s.sendall(frame(1, 0, {"magic": "berth-agent", "version": 1, "client": "guest-kernel/test-boot.sh"}))
kind, _, reply = read_frame(s)
assert kind == 2 and reply.get("result") == "ok", reply
assert reply["agent_pid"] == 1, reply
print("hello-ok agent_pid=1 agent_version=%s" % reply["agent_version"], flush=True)
s.sendall(frame(3, 7, {"op": "shutdown"}))
while True:
    kind, fid, msg = read_frame(s)
    if kind == 4 and fid == 7:
        print("shutdown-reply", json.dumps(msg), flush=True)
        break
PY
QEMU_VSOCK=(-object memory-backend-memfd,id=mem,size=256M,share=on
    -chardev socket,id=vv,path="$WORK/vhost.sock" -device vhost-user-vsock-device,chardev=vv)
QEMU=(qemu-system-x86_64 -accel tcg -cpu max -m 256 -smp 1 -M "$MACHINE,memory-backend=mem"
    -nographic -no-reboot -kernel "$KERNEL")
start=$(now_ms)
"${QEMU[@]}" -initrd "$WORK/agent-initrd.gz" -append "$APPEND RUST_LOG=info" "${QEMU_VSOCK[@]}" \
    </dev/null >"$WORK/stage3.log" 2>&1 &
QEMU_PID=$!
# Connect once the agent says it listens (a CONNECT before the guest driver is up only costs
# retries, but waiting keeps the handshake timing meaningful).
deadline=$(($(now_ms) + TIMEOUT * 1000))
until grep -q "listening on vsock" "$WORK/stage3.log"; do
    kill -0 "$QEMU_PID" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ] || {
        sed 's/^/  guest| /' "$WORK/stage3.log" >&2; sed 's/^/  vhost| /' "$WORK/vhost.log" >&2
        fail "stage 3: the agent did not listen on vsock (qemu alive: $(kill -0 "$QEMU_PID" 2>/dev/null && echo yes || echo no))"
    }
    sleep 0.02
done
listening=$(now_ms)
if ! timeout "$TIMEOUT" python3 "$WORK/client.py" "$WORK/vm.vsock" "$TIMEOUT" >"$WORK/client.log" 2>&1; then
    sed 's/^/  guest| /' "$WORK/stage3.log" >&2; sed 's/^/  client| /' "$WORK/client.log" >&2
    sed 's/^/  vhost| /' "$WORK/vhost.log" >&2
    fail "stage 3: no agent handshake over vsock"
fi
connected=$(now_ms)
# Shutdown makes PID 1 call reboot(2): with reboot=t and -no-reboot qemu must exit on its own.
status=0
deadline=$(($(now_ms) + TIMEOUT * 1000))
while kill -0 "$QEMU_PID" 2>/dev/null; do
    [ "$(now_ms)" -lt "$deadline" ] || { status=timeout; kill "$QEMU_PID"; break; }
    sleep 0.02
done
end=$(now_ms)
wait "$QEMU_PID" && qemu_rc=0 || qemu_rc=$?
QEMU_PID=
kill "$VHOST_PID" 2>/dev/null || true
tr -d '\r' <"$WORK/stage3.log" | sed 's/^/  guest| /' >&2
sed 's/^/  client| /' "$WORK/client.log" >&2
[ "$status" = 0 ] && [ "$qemu_rc" = 0 ] || fail "stage 3: VM did not power off after Shutdown (qemu rc $qemu_rc)"
log "stage 3 ok: host -> guest vsock CONNECT 1024, agent handshake (PID 1), Shutdown powered the VM off"
echo "boot-time vsock: qemu start->agent listening $((listening - start)) ms, ->handshake done $((connected - start)) ms, shutdown->qemu exit $((end - connected)) ms"
