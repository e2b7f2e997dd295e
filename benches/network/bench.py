#!/usr/bin/env python3
"""Bridge networking side by side: berthd vs Debian's dockerd 20.10 + runc with its bridge
and iptables, each daemon inside a network namespace of its own (nothing touches the
machine's interfaces; all traffic stays inside the namespace).

Measures, through the unchanged docker CLI:
  * `docker run --rm <busybox> true` on the default bridge, and with `--network none` (medians of N)
  * TCP throughput container -> container on a user network (busybox nc, 512 MiB)
  * TCP throughput namespace host -> published port on 127.0.0.1 (busybox nc, 512 MiB)
  * the same two with iperf3 (5 s, one stream) when the host has Debian's iperf3
`--daemons` picks the rows: `process` (berthd, process isolation), `microvm` (berthd,
every container a qemu microVM whose NIC is a TAP joined to the veth by tc mirred), and
`dockerd`. `--write` appends the table to benches/RESULTS.md.

usage: benches/network/bench.py [--runs 10] [--mib 512] [--daemons process,dockerd]
                                [--berthd PATH] [--write]   (as root)
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "containers"))
from bench import DOCKER, ROOT, Daemon, berthd_argv, busybox_tar, dockerd_argv  # noqa: E402


def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class NsDaemon(Daemon):
    """A daemon started inside network namespace `ns` (only the netns changes)."""

    def __init__(self, name, argv, sock, ns):
        super().__init__(name, ["nsenter", f"--net=/run/netns/{ns}", *argv], sock)
        self.ns = ns


def docker(d, *args, check=True):
    return subprocess.run([DOCKER, "-H", f"unix://{d.sock}", *args], check=check,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def received(d, name, timeout=60):
    """Bytes the sink container counted for the last connection (`wc -c` in its log)."""
    end = time.time() + timeout
    while time.time() < end:
        lines = docker(d, "logs", name).stdout.decode().split()
        if lines:
            return int(lines[-1])
        time.sleep(0.2)
    return 0


def check(d, name, mib, seconds):
    """MiB/s, once the sink confirms it got every byte."""
    got = received(d, name)
    if got != mib << 20:
        raise RuntimeError(f"{d.name}: {name} received {got} bytes, expected {mib << 20}")
    return mib / seconds


def measure(d, runs, mib):
    docker(d, "run", "--rm", "bb", "true")  # warm
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        docker(d, "run", "--rm", "bb", "true")
        times.append(time.perf_counter() - t)
    run_ms = statistics.median(times) * 1000
    # The same without a network: what the bridge (and for a microVM its TAP) costs.
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        docker(d, "run", "--rm", "--network", "none", "bb", "true")
        times.append(time.perf_counter() - t)
    none_ms = statistics.median(times) * 1000
    # container -> container on a user network
    docker(d, "network", "create", "--subnet", "10.77.0.0/24", "benchnet")
    docker(d, "run", "-d", "--name", "sink", "--network", "benchnet", "bb", "sh", "-c",
           "while true; do sleep 600 | nc -l -p 5000 | wc -c; done")
    time.sleep(1)
    t = time.perf_counter()
    docker(d, "run", "--rm", "--network", "benchnet", "bb", "sh", "-c",
           f"dd if=/dev/zero bs=1M count={mib} 2>/dev/null | nc sink 5000")
    c2c = check(d, "sink", mib, time.perf_counter() - t)
    # namespace host -> published port on 127.0.0.1
    docker(d, "run", "-d", "--name", "pub", "-p", "18080:5000", "bb", "sh", "-c",
           "while true; do sleep 600 | nc -l -p 5000 | wc -c; done")
    time.sleep(1)
    t = time.perf_counter()
    subprocess.run(["nsenter", f"--net=/run/netns/{d.ns}", "sh", "-c",
                    f"dd if=/dev/zero bs=1M count={mib} 2>/dev/null | busybox nc 127.0.0.1 18080"],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    h2p = check(d, "pub", mib, time.perf_counter() - t)
    docker(d, "rm", "-f", "sink", "pub", check=False)
    r = {"run_ms": run_ms, "none_ms": none_ms, "c2c": c2c, "h2p": h2p}
    if shutil.which("iperf3"):
        r.update(measure_iperf3(d))
    docker(d, "network", "rm", "benchnet", check=False)
    return r


# Debian's iperf3 is dynamically linked: the containers get the host's /usr and libraries,
# read-only (a microVM through virtio-fs).
HOST_BINS = ["-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro"]


def iperf3_mib(out):
    """MiB/s the receiver saw, from `iperf3 -J`."""
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / (1 << 20)


def measure_iperf3(d, seconds=5):
    """TCP throughput with iperf3 (one stream, `seconds` long): container -> container on
    the user network, and namespace host -> published port on 127.0.0.1."""
    docker(d, "run", "-d", "--name", "ipsrv", "--network", "benchnet", "-p", "15201:5201", *HOST_BINS,
           "bb", "/usr/bin/iperf3", "-s")
    time.sleep(1)
    out = docker(d, "run", "--rm", "--network", "benchnet", *HOST_BINS, "bb", "sh", "-c",
                 f"for i in 1 2 3 4 5 6 7 8 9 10; do /usr/bin/iperf3 -J -c ipsrv -t {seconds} && exit 0; sleep 1; done; exit 1")
    c2c = iperf3_mib(out.stdout)
    out = subprocess.run(["nsenter", f"--net=/run/netns/{d.ns}", "iperf3", "-J", "-c", "127.0.0.1", "-p", "15201",
                          "-t", str(seconds)], check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    h2p = iperf3_mib(out.stdout)
    docker(d, "rm", "-f", "ipsrv", check=False)
    return {"ip_c2c": c2c, "ip_h2p": h2p}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--daemons", default="process,dockerd")
    ap.add_argument("--berthd", help="berthd binary (default: the newest under target/)")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    berthd = a.berthd or max((p for p in (f"{ROOT}/target/release/berthd", f"{ROOT}/target/debug/berthd")
                              if os.path.exists(p)), key=os.path.getmtime)
    work = tempfile.mkdtemp(prefix="berth-netbench-", dir="/var/tmp")
    tar = f"{work}/bb.tar"
    busybox_tar(tar)
    b_argv = [x for x in berthd_argv(berthd, work) if x not in ("--bridge", "none")]
    vm_work = f"{work}/vm"
    os.makedirs(vm_work)
    vm_argv = [x for x in berthd_argv(berthd, vm_work) if x not in ("--bridge", "none")]
    every = {
        "process": NsDaemon("berthd (process, bridge + nftables)", b_argv + ["--bip", "10.231.0.1/24"],
                            f"{work}/b.sock", "berth-netbench-b"),
        "microvm": NsDaemon("berthd (microVM, qemu TCG, TAP + tc mirred)",
                            vm_argv + ["--bip", "10.233.0.1/24", "--default-isolation", "microvm", "--vmm", "qemu"],
                            f"{vm_work}/b.sock", "berth-netbench-v"),
        "dockerd": NsDaemon("dockerd 20.10 + runc (bridge + iptables)",
                            [x for x in dockerd_argv(work) if x not in ("--iptables=false", "--ip-masq=false", "--bridge=none")]
                            + ["--bip", "10.232.0.1/24"], f"{work}/ref.sock", "berth-netbench-d"),
    }
    daemons = [every[k] for k in a.daemons.split(",")]
    results = {}
    log = open(f"{work}/daemons.log", "w")
    try:
        for d in daemons:
            sh("ip", "netns", "add", d.ns)
            sh("ip", "netns", "exec", d.ns, "ip", "link", "set", "lo", "up")
            d.start(log)
            with open(tar, "rb") as f:
                subprocess.run([DOCKER, "-H", f"unix://{d.sock}", "import", "-", "bb"], stdin=f,
                               check=True, stdout=subprocess.DEVNULL)
            results[d.name] = measure(d, a.runs, a.mib)
            print(d.name, {k: round(v, 1) for k, v in results[d.name].items()}, flush=True)
            d.stop()
    finally:
        for d in daemons:
            d.stop()
            sh("ip", "netns", "del", d.ns, check=False)
    lines = [f"| daemon | `run --rm true`, default bridge (ms, median of {a.runs}) | same, `--network none` (ms) "
             f"| container→container TCP, nc (MiB/s) | host→published port on 127.0.0.1, nc (MiB/s) "
             f"| container→container, iperf3 (MiB/s) | host→published port, iperf3 (MiB/s) |",
             "|---|---|---|---|---|---|---|"]
    ip = lambda r, k: f"{r[k]:.1f}" if k in r else "n/a"  # noqa: E731
    for name, r in results.items():
        lines.append(f"| {name} | {r['run_ms']:.0f} | {r['none_ms']:.0f} | {r['c2c']:.1f} | {r['h2p']:.1f} "
                     f"| {ip(r, 'ip_c2c')} | {ip(r, 'ip_h2p')} |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(f"{ROOT}/benches/RESULTS.md", "a") as f:
            f.write(f"\n## network ({stamp})\n\nCommand: `python3 benches/network/bench.py --runs {a.runs} --mib {a.mib} "
                    f"--daemons {a.daemons} --write` (2 vCPU; each daemon in a network namespace of its own; berthd "
                    f"`{os.path.relpath(berthd, ROOT)}`; throughput through busybox `nc`, {a.mib} MiB of zeros, "
                    f"timed around the whole client including its container start; iperf3: 5 s, one stream, receiver's rate).\n\n{table}\n")


if __name__ == "__main__":
    main()
