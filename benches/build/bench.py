#!/usr/bin/env python3
"""`docker build` side by side, in one run: berthd's classic builder (RUN steps in
process-isolated containers, and with `--default-isolation microvm` each RUN step in its
own microVM) vs Debian's dockerd 20.10 legacy builder with runc.

The same multi-stage Dockerfile (a base stage with several RUN steps and a COPY of a
small context, then a scratch stage with the "binary" copied in) is built:
  * cold: `--no-cache` (every step runs; bases are local),
  * cached: the same build again (every step a cache hit),
each N times, median wall time through the unchanged docker CLI (DOCKER_BUILDKIT=0).

usage: benches/build/bench.py [--runs 5] [--vm-runs 3] [--write] [--berthd PATH]   (as root)
The microVM row needs the guest kernel and vhost-device-vsock (scripts/test.sh builds
them); without them it is left out, saying why.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "containers"))
from bench import DOCKER, ROOT, Daemon, berthd_argv, busybox_tar, dockerd_argv  # noqa: E402

DOCKERFILE = """\
FROM bb:bench AS build
ARG GREETING=hello
WORKDIR /src
COPY . .
RUN cp /bin/busybox /hello
RUN for i in 1 2 3 4 5; do echo "$GREETING $i" >> /built.txt; done
RUN sha256sum /src/* > /sums.txt
ENV BUILT=yes
RUN test "$BUILT" = yes

FROM scratch
COPY --from=build /hello /bin/busybox
COPY --from=build /built.txt /sums.txt /etc/
ENTRYPOINT ["/bin/busybox"]
CMD ["cat", "/etc/built.txt"]
"""


def context(dir):
    with open(f"{dir}/Dockerfile", "w") as f:
        f.write(DOCKERFILE)
    for i in range(20):
        with open(f"{dir}/file{i}.txt", "w") as f:
            f.write(f"context file {i}\n" * 200)


def build(d, ctx, *extra):
    env = dict(os.environ, DOCKER_HOST=f"unix://{d.sock}", DOCKER_BUILDKIT="0")
    t = time.perf_counter()
    r = subprocess.run([DOCKER, "build", "-q", *d.extra_run, *extra, "-t", "bench:built", ctx], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{d.name}: build failed: {r.stderr.decode()}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vm-runs", type=int, default=3)
    ap.add_argument("--berthd", default=None)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    berthd = a.berthd or max((p for p in (f"{ROOT}/target/release/berthd", f"{ROOT}/target/debug/berthd")
                              if os.path.exists(p)), key=os.path.getmtime)
    work = tempfile.mkdtemp(prefix="berth-buildbench-", dir="/var/tmp")
    ctx = f"{work}/ctx"
    os.makedirs(ctx)
    context(ctx)
    bb = f"{work}/bb.tar"
    busybox_tar(bb)
    berth = Daemon("berthd", berthd_argv(berthd, work), f"{work}/b.sock")
    ref = Daemon("dockerd 20.10 + runc", dockerd_argv(work), f"{work}/ref.sock", ["--network", "none"])
    vm_work = f"{work}/vm"
    os.makedirs(vm_work)
    vm = Daemon("berthd, RUN steps in microVMs", berthd_argv(berthd, vm_work)
                + ["--default-isolation", "microvm", "--vmm", "qemu"], f"{vm_work}/b.sock")
    results = {}
    log = open(f"{work}/daemons.log", "w")
    try:
        for d in (berth, ref, vm):
            runs = a.vm_runs if d is vm else a.runs
            d.start(log)
            with open(bb, "rb") as f:
                subprocess.run([DOCKER, "import", "-", "bb:bench"], stdin=f, check=True, stdout=subprocess.DEVNULL,
                               env=dict(os.environ, DOCKER_HOST=f"unix://{d.sock}"))
            try:
                build(d, ctx)  # warm: page cache, the base's layers
            except RuntimeError as e:
                if d is not vm:
                    raise
                print(f"SKIPPED {d.name}: {e}", flush=True)
                continue
            cold = [build(d, ctx, "--no-cache") for _ in range(runs)]
            cached = [build(d, ctx) for _ in range(runs)]
            out = d.docker("run", "--rm", "bench:built").stdout.decode()
            if "hello 5" not in out:
                raise RuntimeError(f"{d.name}: built image prints {out!r}")
            results[d.name] = (statistics.median(cold), statistics.median(cached))
            print(d.name, {"cold_s": round(results[d.name][0], 3), "cached_s": round(results[d.name][1], 3)}, flush=True)
    finally:
        berth.stop()
        ref.stop()
        vm.stop()
    b, r = results["berthd"], results["dockerd 20.10 + runc"]
    lines = ["| builder | cold, --no-cache (s) | fully cached (s) |", "|---|---|---|"]
    for name, (c, h) in results.items():
        lines.append(f"| {name} | {c:.2f} | {h:.2f} |")
    lines.append(f"| berthd / dockerd | {b[0] / r[0]:.2f}x | {b[1] / r[1]:.2f}x |")
    if vm.name in results:
        v = results[vm.name]
        lines.append(f"| microVM RUN steps / dockerd | {v[0] / r[0]:.2f}x | {v[1] / r[1]:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if a.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(f"{ROOT}/benches/RESULTS.md", "a") as f:
            f.write(f"\n## docker build, classic builder ({stamp}, `benches/build/bench.py --runs {a.runs}`)\n\n"
                    "A two-stage Dockerfile (4 RUN steps, COPY of a 20-file context, a scratch stage with\n"
                    "COPY --from), built with the docker CLI 28 and `DOCKER_BUILDKIT=0`; median wall time.\n"
                    f"berthd: `{os.path.relpath(berthd, ROOT)}`, process isolation, and with `--default-isolation microvm`\n"
                    f"(qemu backend; {a.vm_runs} runs, each RUN step in its own VM); dockerd: overlay2 + runc.\n"
                    "Targets (issue): cold <= 1x dockerd, cached <= 0.5x.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
