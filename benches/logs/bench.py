#!/usr/bin/env python3
"""Side-by-side log benchmarks: berthd (json-file WASM plugin, default blocking mode) vs
Debian's dockerd 20.10 + runc (json-file), on the same machine in one run.

For N lines from `seq 1 N` in a container, through the unchanged docker CLI:
  * the attached run (`docker run --name L <busybox> seq 1 N > /dev/null`), wall time
  * `docker logs L` read back: wall time, and whether every line came back in order
  * `docker logs --tail 1 L`, wall time
and prints lines/s. `--write` appends the table to benches/RESULTS.md.

usage: benches/logs/bench.py [--lines 1000000] [--write]   (as root; needs
target/release/berthd and berth-agent: `cargo build --release -p berthd -p berth-agent`)
"""
import argparse, os, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "containers"))
from bench import DOCKER, ROOT, Daemon, berthd_argv, busybox_tar, dockerd_argv, sh  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def in_order(data, n):
    expect = 1
    for line in data.split(b"\n")[:-1]:
        if line != str(expect).encode():
            return False
        expect += 1
    return expect - 1 == n


def bench(d, n):
    env = dict(os.environ, DOCKER_HOST=f"unix://{d.sock}")
    d.docker("rm", "-f", "logbench", check=False)
    run_s, _ = timed(lambda: subprocess.run([DOCKER, "run", "--name", "logbench", *d.extra_run, "bb:bench", "seq", "1", str(n)],
                                            env=env, stdout=subprocess.DEVNULL, check=True))
    read_s, out = timed(lambda: subprocess.run([DOCKER, "logs", "logbench"], env=env, stdout=subprocess.PIPE, check=True).stdout)
    tail_s, last = timed(lambda: subprocess.run([DOCKER, "logs", "--tail", "1", "logbench"], env=env, stdout=subprocess.PIPE,
                                                check=True).stdout)
    d.docker("rm", "-f", "logbench")
    return {
        "run_s": run_s,
        "read_s": read_s,
        "tail1_ms": tail_s * 1000,
        "lines_back": out.count(b"\n"),
        "exact": in_order(out, n) and last == f"{n}\n".encode(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    berthd = f"{ROOT}/target/release/berthd"
    if not os.path.exists(berthd):
        sh("cargo", "build", "--release", "-p", "berthd", "-p", "berth-agent", quiet=False)
    work = tempfile.mkdtemp(prefix="berth-logbench-", dir="/tmp")
    tar = f"{work}/bb.tar"
    busybox_tar(tar)
    daemons = [
        Daemon("berthd (process)", berthd_argv(berthd, work), f"{work}/b.sock"),
        Daemon("dockerd 20.10 + runc", dockerd_argv(work), f"{work}/ref.sock", ["--network", "none"]),
    ]
    results = {}
    log = open(f"{work}/daemons.log", "w")
    try:
        for d in daemons:
            d.start(log)
            with open(tar, "rb") as f:
                subprocess.run([DOCKER, "import", "-", "bb:bench"], stdin=f, check=True, stdout=subprocess.DEVNULL,
                               env=dict(os.environ, DOCKER_HOST=f"unix://{d.sock}"))
            results[d.name] = bench(d, a.lines)
            print(d.name, results[d.name], flush=True)
            d.stop()
    finally:
        for d in daemons:
            d.stop()
    n = a.lines
    lines = [f"| daemon | attached run of {n:,} lines (s) | lines/s | `docker logs` (s) | lines/s | `--tail 1` (ms) | every line back, in order |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['run_s']:.2f} | {n / r['run_s'] / 1e6:.2f} M | {r['read_s']:.2f} | "
                     f"{n / r['read_s'] / 1e6:.2f} M | {r['tail1_ms']:.0f} | {'yes' if r['exact'] else 'NO (' + str(r['lines_back']) + ')'} |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(f"{ROOT}/benches/RESULTS.md", "a") as f:
            f.write(f"\n## logs ({stamp})\n\nCommand: `python3 benches/logs/bench.py --lines {n} --write` (2 vCPU, release "
                    f"build; berthd's json-file WASM plugin in its default blocking mode vs dockerd's json-file).\n\n{table}\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
