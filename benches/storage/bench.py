#!/usr/bin/env python3
"""Storage throughput side by side, in one run: where a container's files can live.

  * process isolation: the container's root (overlay) and a directory volume (bind);
  * microVM isolation (qemu backend): the container's root (overlay on the guest's
    writable ext4 disk), a virtio-fs bind mount (one sandboxed virtiofsd) and a block
    volume (`-o kind=disk`, ext4 image on virtio-blk);
  * dockerd 20.10 + runc: its overlay2 root and a local volume, as the reference.

Workloads, each in a fresh directory of the target, timed from the host around
`docker exec`, caches dropped (host and guest) before every read:
  * sequential write: `dd if=/dev/zero bs=1M count=N conv=fsync`
  * sequential read of that file: `dd of=/dev/null bs=1M`
  * small files: untar a tree of F files (1-4 KiB, 50 directories), then `sync`

On a host without hardware KVM the microVM rows run under TCG (software emulation), so
they measure the emulator more than the I/O path; the script is the same on hardware
KVM, where the aim is a block volume within 1.5x of process-mode throughput.

usage: benches/storage/bench.py [--mib 256] [--files 5000] [--write] [--berthd PATH]
(as root; needs berthd + berth-agent built, the guest kernel, scripts/install-vm-tools.sh)
"""
import argparse, io, os, random, shutil, subprocess, sys, tarfile, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "containers"))
from bench import DOCKER, ROOT, Daemon, berthd_argv, busybox_tar, dockerd_argv  # noqa: E402


def make_tree(path, files):
    rng = random.Random(7)
    with tarfile.open(path, "w") as t:
        for i in range(files):
            data = rng.randbytes(rng.randint(1024, 4096))
            info = tarfile.TarInfo(f"tree/d{i % 50:02}/f{i:05}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def drop_host_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Target:
    def __init__(self, name, daemon, run_args, path):
        self.name, self.daemon, self.run_args, self.path = name, daemon, run_args, path


def exec_timed(d, cid, script):
    t = time.perf_counter()
    r = d.docker("exec", cid, "sh", "-c", script, check=False)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{script}: {r.stderr.decode()}")
    return dt


def measure(t, src_dir, mib, files):
    d = t.daemon
    # Privileged so the guest's page cache can be dropped inside a microVM (the host's is
    # dropped from here); dockerd's runc cannot run privileged containers in this sandbox.
    priv = ["--privileged"] if d.name == "berthd" else []
    cid = d.docker("run", "-d", *priv, "-v", f"{src_dir}:/src:ro", *t.run_args, "bb:bench",
                   "sleep", "100000").stdout.decode().strip()
    try:
        p = t.path
        exec_timed(d, cid, f"mkdir -p {p}/bench")
        drop = "sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; true"
        write_s = exec_timed(d, cid, f"dd if=/dev/zero of={p}/bench/big bs=1M count={mib} conv=fsync 2>/dev/null")
        drop_host_caches()
        exec_timed(d, cid, drop)
        read_s = exec_timed(d, cid, f"dd if={p}/bench/big of=/dev/null bs=1M 2>/dev/null")
        exec_timed(d, cid, f"rm -f {p}/bench/big; {drop}")
        drop_host_caches()
        untar_s = exec_timed(d, cid, f"tar -xf /src/tree.tar -C {p}/bench && sync")
        n = int(d.docker("exec", cid, "sh", "-c", f"find {p}/bench/tree -type f | wc -l").stdout.decode())
        if n != files:
            raise RuntimeError(f"{t.name}: {n} files extracted, expected {files}")
    finally:
        d.docker("rm", "-f", cid, check=False)
    return {"write": mib / write_s, "read": mib / read_s, "untar": files / untar_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--berthd", default=None)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    # The newest build: the I/O path is the kernel, qemu and virtiofsd, not berthd.
    berthd = a.berthd or max((p for p in (f"{ROOT}/target/release/berthd", f"{ROOT}/target/debug/berthd")
                              if os.path.exists(p)), key=os.path.getmtime)
    work = tempfile.mkdtemp(prefix="berth-storagebench-", dir="/var/tmp")
    src = f"{work}/src"
    os.makedirs(src)
    make_tree(f"{src}/tree.tar", a.files)
    bb = f"{work}/bb.tar"
    busybox_tar(bb)
    share = f"{work}/share"
    os.makedirs(share)
    berth = Daemon("berthd", berthd_argv(berthd, work) + ["--vmm", "qemu"], f"{work}/b.sock")
    ref = Daemon("dockerd 20.10 + runc", dockerd_argv(work), f"{work}/ref.sock", ["--network", "none"])
    targets = [
        Target("process: container root", berth, [], "/root"),
        Target("process: directory volume", berth, ["-v", "pvol:/vol"], "/vol"),
        Target("microVM: container root", berth, ["--isolation=microvm"], "/root"),
        Target("microVM: virtio-fs bind", berth, ["--isolation=microvm", "-v", f"{share}:/share"], "/share"),
        Target("microVM: block volume", berth, ["--isolation=microvm", "-v", "blk:/blk"], "/blk"),
        Target("dockerd+runc: container root", ref, ["--network", "none"], "/root"),
        Target("dockerd+runc: local volume", ref, ["--network", "none", "-v", "rvol:/vol"], "/vol"),
    ]
    results = {}
    log = open(f"{work}/daemons.log", "w")
    try:
        for d in (berth, ref):
            d.start(log)
            with open(bb, "rb") as f:
                subprocess.run([DOCKER, "import", "-", "bb:bench"], stdin=f, check=True, stdout=subprocess.DEVNULL,
                               env=dict(os.environ, DOCKER_HOST=f"unix://{d.sock}"))
        berth.docker("volume", "create", "-o", "kind=disk", "-o", f"size={a.mib * 2 + 512}M", "blk")
        for t in targets:
            results[t.name] = measure(t, src, a.mib, a.files)
            print(t.name, {k: round(v, 1) for k, v in results[t.name].items()}, flush=True)
    finally:
        berth.stop()
        ref.stop()
    base = results["process: container root"]
    lines = [f"| where the files are | write {a.mib} MiB, fsync (MiB/s) | read (MiB/s) | untar {a.files:,} files + sync "
             "(files/s) | vs process root (write / read / untar) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['write']:.0f} | {r['read']:.0f} | {r['untar']:.0f} | "
                     f"{r['write'] / base['write']:.2f} / {r['read'] / base['read']:.2f} / {r['untar'] / base['untar']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        kvm = "hardware KVM" if not os.path.exists("/sys/module/kvm_pvm") else "TCG (KVM here is PVM)"
        with open(f"{ROOT}/benches/RESULTS.md", "a") as f:
            f.write(f"\n## storage ({stamp})\n\nCommand: `python3 benches/storage/bench.py --mib {a.mib} --files {a.files} "
                    f"--write` (2 vCPU; microVMs through qemu under {kvm}; berthd `{os.path.relpath(berthd, ROOT)}`). "
                    f"Timed from the host around `docker exec`; caches dropped before each read.\n\n{table}\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
