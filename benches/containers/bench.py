#!/usr/bin/env python3
"""Side-by-side container benchmarks: berthd (process isolation) vs Debian's
dockerd 20.10 with runc and with runsc (gVisor), on the same machine in one run.

Measures, through the unchanged docker CLI:
  * `docker run --rm <busybox> true`  (median of N sequential runs)
  * 20 `docker run --rm ... true` started in parallel (wall time)
  * `docker exec <c> true` round trips (median)
and prints ratios berthd/dockerd. `--write` appends the table to benches/RESULTS.md.

usage: benches/containers/bench.py [--runs 20] [--write]   (as root; needs
target/release/berthd and berth-agent, built by scripts/berthd-up.sh or
`cargo build --release -p berthd -p berth-agent`)
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCKER = "/usr/local/bin/docker"


def sh(*args, env=None, check=True, quiet=True):
    r = subprocess.run(args, env=env, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.decode()}")
    return r


def wait_socket(path, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            r = subprocess.run([DOCKER, "-H", f"unix://{path}", "version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"daemon at {path} did not come up")


def busybox_tar(dest):
    root = tempfile.mkdtemp(prefix="bbroot-")
    os.makedirs(f"{root}/bin")
    shutil.copy("/bin/busybox", f"{root}/bin/busybox")
    for applet in subprocess.check_output(["/bin/busybox", "--list"]).decode().split():
        if applet != "busybox":
            os.symlink("busybox", f"{root}/bin/{applet}")
    for d in ["etc", "tmp", "proc", "sys", "dev"]:
        os.makedirs(f"{root}/{d}", exist_ok=True)
    sh("tar", "-C", root, "-cf", dest, ".")
    shutil.rmtree(root)


class Daemon:
    def __init__(self, name, argv, sock, extra_run=()):
        self.name, self.argv, self.sock, self.extra_run = name, argv, sock, list(extra_run)
        self.proc = None

    def start(self, log):
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, start_new_session=True)
        wait_socket(self.sock)

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def docker(self, *args, check=True):
        env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}")
        return sh(DOCKER, *args, env=env, check=check)


def berthd_argv(berthd, work):
    """berthd on private dirs under `work`, socket `work`/b.sock, no bridge (as the dockerd peer)."""
    return [berthd, "-H", f"unix://{work}/b.sock", "--data-root", f"{work}/b-data",
            "--exec-root", f"{work}/b-run", "--pidfile", f"{work}/b.pid", "--log-level", "warn",
            "--bridge", "none"]


def dockerd_argv(work, *extra):
    """The reference dockerd on private dirs under `work`, socket `work`/ref.sock, no bridge or iptables."""
    return ["dockerd", "-H", f"unix://{work}/ref.sock", "--data-root", f"{work}/ref-data", "--exec-root", f"{work}/ref-exec",
            "--pidfile", f"{work}/ref.pid", "--iptables=false", "--ip-masq=false", "--bridge=none",
            "--storage-driver=overlay2", *extra]


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(d, runs):
    image = "bb:bench"
    run = lambda: d.docker("run", "--rm", *d.extra_run, image, "true")
    run()  # warm caches
    seq = [timed(run) for _ in range(runs)]

    def parallel():
        procs = [subprocess.Popen([DOCKER, "run", "--rm", *d.extra_run, image, "true"],
                                  env=dict(os.environ, DOCKER_HOST=f"unix://{d.sock}"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(20)]
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError(f"{d.name}: parallel run failed: {p.stderr.read().decode()}")
    par = [timed(parallel) for _ in range(3)]

    d.docker("run", "-d", "--name", "benchexec", *d.extra_run, image, "sleep", "600")
    ex = [timed(lambda: d.docker("exec", "benchexec", "true")) for _ in range(runs)]
    d.docker("rm", "-f", "benchexec")
    return {
        "run_rm_median_ms": statistics.median(seq) * 1000,
        "run_rm_p90_ms": sorted(seq)[int(len(seq) * 0.9) - 1] * 1000,
        "parallel20_median_s": statistics.median(par),
        "exec_median_ms": statistics.median(ex) * 1000,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--no-runsc", action="store_true")
    a = ap.parse_args()
    subprocess.run(["bash", f"{ROOT}/scripts/install-deps.sh", "runsc"], check=True)
    berthd = f"{ROOT}/target/release/berthd"
    if not os.path.exists(berthd):
        sh("cargo", "build", "--release", "-p", "berthd", "-p", "berth-agent", quiet=False)
    work = tempfile.mkdtemp(prefix="berth-bench-", dir="/tmp")
    tar = f"{work}/bb.tar"
    busybox_tar(tar)
    with open(f"{work}/daemon.json", "w") as f:
        json.dump({"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none", "--ignore-cgroups"]}}}, f)
    ref_argv = dockerd_argv(work, "--config-file", f"{work}/daemon.json")
    daemons = [Daemon("berthd (process)", berthd_argv(berthd, work), f"{work}/b.sock")]
    ref = Daemon("dockerd 20.10 + runc", ref_argv, f"{work}/ref.sock", ["--network", "none"])
    daemons.append(ref)
    if not a.no_runsc and shutil.which("runsc"):
        daemons.append(Daemon("dockerd 20.10 + runsc", None, ref.sock, ["--network", "none", "--runtime", "runsc"]))
    results = {}
    log = open(f"{work}/daemons.log", "w")
    try:
        for d in daemons:
            if d.argv:
                d.start(log)
                with open(tar, "rb") as f:
                    subprocess.run([DOCKER, "import", "-", "bb:bench"], stdin=f, check=True, stdout=subprocess.DEVNULL,
                                   env=dict(os.environ, DOCKER_HOST=f"unix://{d.sock}"))
            try:
                results[d.name] = bench(d, a.runs)
            except RuntimeError as e:
                print(f"{d.name}: {e}", file=sys.stderr)
            print(d.name, json.dumps(results.get(d.name), indent=None), flush=True)
            if d.argv and d is not ref:
                d.stop()
    finally:
        ref.stop()
        for d in daemons:
            d.stop()
    base = results.get("dockerd 20.10 + runc")
    b = results.get("berthd (process)")
    lines = ["| daemon | run --rm median (ms) | run --rm p90 (ms) | 20 parallel (s) | exec median (ms) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['run_rm_median_ms']:.0f} | {r['run_rm_p90_ms']:.0f} | {r['parallel20_median_s']:.2f} | {r['exec_median_ms']:.0f} |")
    if base and b:
        lines.append("")
        lines.append(f"Ratios berthd/dockerd+runc (same run): run --rm **{b['run_rm_median_ms']/base['run_rm_median_ms']:.2f}x**, "
                     f"20 parallel **{b['parallel20_median_s']/base['parallel20_median_s']:.2f}x**, exec **{b['exec_median_ms']/base['exec_median_ms']:.2f}x**.")
    table = "\n".join(lines)
    print(table)
    if a.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(f"{ROOT}/benches/RESULTS.md", "a") as f:
            f.write(f"\n## containers ({stamp})\n\nCommand: `python3 benches/containers/bench.py --runs {a.runs} --write` "
                    f"(2 vCPU, release build, busybox image via docker import; dockerd with overlay2, `--network none`; "
                    f"berthd process isolation, loopback-only netns).\n\n{table}\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
