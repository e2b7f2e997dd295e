#!/usr/bin/env python3
"""Per-request cost of an authorization plugin: p50/p99 latency of `GET /_ping`
and `GET /version` against two berthd daemons run side by side, one without
authorization plugins and one with `--authorization-plugin tenant-policy`.

Requests go over the unix socket as root (the policy's admin path: the plugin is
called for the request and the response, and allows), on one keep-alive
connection per daemon; the two daemons are measured in alternating batches so
machine noise hits both alike. The figure that matters is the difference.

usage: benches/authz/bench.py [--requests 20000] [--bin target/release] [--write]
(as root; needs berthd + berth-agent in --bin and the plugins from
scripts/build-plugins.sh in <bin>/../plugins)
"""
import argparse, os, shutil, socket, statistics, subprocess, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def start(bindir, tmp, name, extra):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    sock = os.path.join(d, "d.sock")
    argv = [os.path.join(bindir, "berthd"), "-H", f"unix://{sock}", "--data-root", f"{d}/data",
            "--exec-root", f"{d}/run", "--pidfile", f"{d}/pid", "--bridge", "none",
            "--log-level", "warn"] + extra
    log = open(f"{d}/log", "w")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    for line in p.stdout:
        if "listening" in line:
            break
    else:
        raise SystemExit(f"{name}: berthd did not start; see {d}/log")
    return p, sock


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""

    def get(self, path):
        self.s.sendall(f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v)
        while len(rest) < n:
            rest += self.s.recv(65536)
        self.buf = rest[n:]
        if status != 200:
            raise SystemExit(f"GET {path}: {status} {rest[:n]!r}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="berth-authz-bench-")
    procs = []
    try:
        plain, s0 = start(a.bin, tmp, "plain", [])
        procs.append(plain)
        authz, s1 = start(a.bin, tmp, "authz", ["--authorization-plugin", "tenant-policy"])
        procs.append(authz)
        conns = {"none": Conn(s0), "tenant-policy": Conn(s1)}
        rows = []
        for path in ["/_ping", "/version"]:
            lat = {k: [] for k in conns}
            for c in conns.values():  # warm up: instances, caches
                for _ in range(500):
                    c.get(path)
            batch = 500
            for _ in range(a.requests // batch):
                for k, c in conns.items():
                    for _ in range(batch):
                        t = time.perf_counter_ns()
                        c.get(path)
                        lat[k].append((time.perf_counter_ns() - t) / 1000)
            base50, base99 = pct(lat["none"], 0.5), pct(lat["none"], 0.99)
            for k in conns:
                p50, p99 = pct(lat[k], 0.5), pct(lat[k], 0.99)
                rows.append((path, k, len(lat[k]), p50, p99, p50 - base50, p99 - base99))
        out = ["| request | authorization plugins | requests | p50 (µs) | p99 (µs) | added p50 (µs) | added p99 (µs) |",
               "|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| `GET {r[0]}` | {r[1]} | {r[2]} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.0f} |")
        table = "\n".join(out)
        print(table)
        if a.write:
            stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            with open(os.path.join(ROOT, "benches", "RESULTS.md"), "a") as f:
                f.write(f"\n## authorization plugin overhead ({stamp})\n\n"
                        f"Command: `python3 benches/authz/bench.py --requests {a.requests} --write` "
                        f"(2 vCPU shared with other builds, `{os.path.relpath(a.bin, ROOT)}` binaries; "
                        "one keep-alive unix-socket connection per daemon, alternating batches of 500; "
                        "the tenant-policy plugin is called for the request (AuthZReq) and the response "
                        "(AuthZRes) of every call).\n\n" + table + "\n")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
