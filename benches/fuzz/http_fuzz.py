#!/usr/bin/env python3
"""A bounded HTTP fuzz campaign against a live berthd over its unix socket.

Generates requests from Docker API templates (every route family, with and without
version prefixes) and mutates them: query values and JSON body fields of wrong types,
huge and negative numbers, multibyte and control text, path traversal, long strings,
broken JSON and bodies. Streaming endpoints are only called in bounded forms (events with
`until`, logs without `follow`); nothing is pulled from the network.

Counts, and fails (exit 1) on any of:
  * crash: the daemon process exits, or stops answering `/_ping`;
  * hang: a request without a complete response within --timeout seconds;
  * panic: a 500 whose message says a handler panicked (berthd answers those instead of
    dropping the connection, so they are findings, not crashes);
  * bad error shape: a 4xx/5xx that is not JSON with a "message";
  * connection error: the request could not be completed although the daemon lives (e.g. a
    broken pipe because the daemon answered and closed before reading the body).

usage: http_fuzz.py --socket PATH [--pid PID] [--requests 100000] [--seed 1]
                    [--timeout 10] [--write]      (--write appends to benches/RESULTS.md)
"""
import argparse, http.client, json, os, random, socket, sys, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path_ = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path_)
        self.sock = s


WEIRD_STRINGS = [
    "", " ", "a" * 5000, "é" * 300, "ü\u0000x", "\u202e\u200b", "../../../../etc/passwd", "/..", "..",
    "%2e%2e%2f", "*" * 2000, "a*" * 1000 + "b", "\\", "'\"", "${jndi:x}", "\n\r", "\t", "0x10", "1e400",
    "9" * 40, "-1", "-9223372036854775808", "18446744073709551616", "NaN", "true", "null", "{}", "[]",
    "2023-13-45T99:99:99Z", "99999999999999-01-01T00:00:00Z", "10h10h", "ééé10m", "0.0000000001",
]
WEIRD_NUMBERS = [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**30, 1.5, -0.0, 1e308]


def weird(rng):
    kind = rng.random()
    if kind < 0.45:
        return rng.choice(WEIRD_STRINGS)
    if kind < 0.75:
        return rng.choice(WEIRD_NUMBERS)
    if kind < 0.85:
        return rng.choice([True, False, None])
    if kind < 0.93:
        return [weird(rng) for _ in range(rng.randint(0, 3))]
    return {rng.choice(WEIRD_STRINGS[:12]) or "k": weird(rng) for _ in range(rng.randint(0, 3))}


def mutate(rng, v, depth=0):
    """Return `v` with some fields swapped for hostile values (recursively)."""
    if depth > 4:
        return v
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            r = rng.random()
            if r < 0.15:
                continue  # drop the field
            out[k] = weird(rng) if r < 0.35 else mutate(rng, x, depth + 1)
        if rng.random() < 0.1:
            out[rng.choice(["Bogus", "", "é", "x" * 300])] = weird(rng)
        return out
    if isinstance(v, list):
        return [mutate(rng, x, depth + 1) for x in v] + ([weird(rng)] if rng.random() < 0.2 else [])
    return weird(rng) if rng.random() < 0.3 else v


CREATE_BODY = {
    "Image": "bb", "Cmd": ["true"], "Env": ["A=1"], "Labels": {"fuzz": "1"}, "WorkingDir": "/",
    "Entrypoint": None, "User": "", "Tty": False, "OpenStdin": False, "ExposedPorts": {"80/tcp": {}},
    "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1000000000, "Retries": 3},
    "HostConfig": {"Memory": 0, "MemorySwap": 0, "CpuShares": 0, "NanoCpus": 0, "PidsLimit": 0,
                   "CgroupParent": "", "Binds": [], "Mounts": [], "Tmpfs": {}, "ShmSize": 0,
                   "Ulimits": [{"Name": "nofile", "Soft": 10, "Hard": 10}], "Sysctls": {},
                   "OomScoreAdj": 0, "RestartPolicy": {"Name": "no"}, "NetworkMode": "none",
                   "CapAdd": [], "SecurityOpt": [], "LogConfig": {"Type": "json-file", "Config": {}},
                   "Isolation": "", "Devices": [], "VolumesFrom": [], "BlkioWeight": 0},
}


def templates(rng, ids):
    cid = rng.choice(ids["containers"] + [rng.choice(WEIRD_STRINGS) or "x"])
    vol = rng.choice(ids["volumes"] + ["nosuch"])
    filters = json.dumps(mutate(rng, {"label": ["a=b"], "status": ["running"], "until": ["10m"],
                                      "reference": ["bb*"], "dangling": ["true"], "name": ["x"]}))
    return [
        ("GET", "/_ping", None, {}),
        ("GET", "/version", None, {}),
        ("GET", "/info", None, {}),
        ("GET", "/containers/json", None, {"all": weird(rng), "limit": weird(rng), "filters": filters}),
        ("POST", "/containers/create", mutate(rng, CREATE_BODY), {"name": weird(rng)}),
        ("GET", f"/containers/{cid}/json", None, {"size": weird(rng)}),
        ("GET", f"/containers/{cid}/logs", None, {"stdout": 1, "stderr": 1, "tail": weird(rng),
                                                   "since": weird(rng), "until": weird(rng)}),
        ("POST", f"/containers/{cid}/start", None, {}),
        ("POST", f"/containers/{cid}/stop", None, {"t": weird(rng)}),
        ("POST", f"/containers/{cid}/kill", None, {"signal": weird(rng)}),
        ("POST", f"/containers/{cid}/update", mutate(rng, {"Memory": 10 << 20, "CpuShares": 512,
                                                           "RestartPolicy": {"Name": "always"}}), {}),
        ("POST", f"/containers/{cid}/rename", None, {"name": weird(rng)}),
        ("GET", f"/containers/{cid}/top", None, {"ps_args": weird(rng)}),
        ("GET", f"/containers/{cid}/stats", None, {"stream": "false", "one-shot": weird(rng)}),
        ("GET", f"/containers/{cid}/changes", None, {}),
        ("HEAD", f"/containers/{cid}/archive", None, {"path": weird(rng)}),
        ("GET", f"/containers/{cid}/archive", None, {"path": weird(rng)}),
        ("PUT", f"/containers/{cid}/archive", bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2048))),
         {"path": weird(rng)}),
        ("POST", f"/containers/{cid}/exec", mutate(rng, {"Cmd": ["true"], "AttachStdout": True}), {}),
        ("POST", "/containers/prune", None, {"filters": filters}),
        ("POST", "/commit", mutate(rng, {"Cmd": ["x"]}), {"container": cid, "repo": weird(rng),
                                                          "changes": weird(rng)}),
        ("DELETE", f"/containers/{cid}", None, {"force": weird(rng), "v": weird(rng)}),
        ("GET", "/images/json", None, {"filters": filters, "all": weird(rng)}),
        ("GET", f"/images/{rng.choice(['bb', 'nosuch', weird(rng)])}/json", None, {}),
        ("GET", f"/images/{rng.choice(['bb', weird(rng)])}/history", None, {}),
        ("POST", f"/images/{rng.choice(['bb', weird(rng)])}/tag", None, {"repo": weird(rng), "tag": weird(rng)}),
        ("POST", "/images/prune", None, {"filters": filters}),
        ("POST", "/images/load", bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 4096))), {}),
        ("POST", "/images/create", bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 4096))),
         {"fromSrc": "-", "repo": weird(rng), "changes": weird(rng)}),
        ("GET", "/images/search", None, {"term": weird(rng)}),
        ("GET", "/volumes", None, {"filters": filters}),
        ("POST", "/volumes/create", mutate(rng, {"Name": "fz", "Driver": "local", "DriverOpts": {"kind": "dir"},
                                                 "Labels": {"a": "b"}}), {}),
        ("GET", f"/volumes/{vol}", None, {}),
        ("DELETE", f"/volumes/{vol}", None, {"force": weird(rng)}),
        ("POST", "/volumes/prune", None, {"filters": filters}),
        ("GET", "/events", None, {"since": "0", "until": str(int(time.time())), "filters": filters}),
        ("GET", "/system/df", None, {}),
        ("POST", "/auth", mutate(rng, {"username": "u", "password": "p", "serveraddress": "127.0.0.1:1"}), {}),
        ("GET", "/" + rng.choice(WEIRD_STRINGS), None, {}),
        (rng.choice(["PATCH", "OPTIONS", "TRACE"]), "/containers/json", None, {}),
    ]


def encode_query(q):
    from urllib.parse import quote
    parts = []
    for k, v in q.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v)
        parts.append(f"{quote(str(k))}={quote(str(v), safe='')}")
    return "&".join(parts)


def alive(sock, pid):
    if pid and not os.path.exists(f"/proc/{pid}"):
        return False
    try:
        c = UnixHTTPConnection(sock, 10)
        c.request("GET", "/_ping")
        return c.getresponse().status == 200
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--pid", type=int, default=0)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    ids = {"containers": [], "volumes": ["fz"]}
    counts = {"sent": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    findings = []
    errors = {}
    t0 = time.time()
    conn = None
    for i in range(a.requests):
        method, path, body, query = rng.choice(templates(rng, ids))
        if rng.random() < 0.5:
            path = rng.choice(["/v1.24", "/v1.41", "/v1.47", "/v1.99", "/v0.1", "/vé"]) + path
        from urllib.parse import quote
        url = quote(path, safe="/") + ("?" + encode_query(query) if query else "")
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            if rng.random() < 0.05:
                data = data[: rng.randint(0, len(data))]  # broken JSON
            headers = {"Content-Type": "application/json"}
        elif isinstance(body, bytes):
            data, headers = body, {"Content-Type": "application/x-tar"}
        else:
            data, headers = None, {}
        for attempt in (1, 2):
            try:
                if conn is None:
                    conn = UnixHTTPConnection(a.socket, a.timeout)
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (socket.timeout, TimeoutError):
                findings.append(("hang", method, url[:200], None, f"no response in {a.timeout}s"))
                conn = None
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                # A kept-alive connection the server closed (e.g. after refusing a body
                # early) fails on reuse: send once more on a fresh one.
                conn = None
                if attempt == 1:
                    continue
                counts["conn_errors"] = counts.get("conn_errors", 0) + 1
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                if os.environ.get("FUZZ_DEBUG"):
                    print("CONNERR", method, url[:120], len(data or b""), file=sys.stderr)
                if not alive(a.socket, a.pid):
                    findings.append(("crash", method, url[:200], None, repr(e)))
                else:
                    # e.g. a broken pipe: the daemon answered before reading the body and
                    # closed, so the client never saw the answer.
                    findings.append(("connection error", method, url[:200], None, repr(e)))
                break
            counts["sent"] += 1
            counts[f"{resp.status // 100}xx"] = counts.get(f"{resp.status // 100}xx", 0) + 1
            if resp.status >= 400 and method != "HEAD":
                try:
                    msg = json.loads(raw)["message"]
                except Exception:
                    findings.append(("bad error shape", method, url[:200], resp.status, raw[:200]))
                    msg = ""
                if resp.status == 500 and ("panicked" in str(msg) or "internal error handling" in str(msg)):
                    findings.append(("panic", method, url[:200], resp.status, str(msg)[:300]))
            if method == "POST" and path.endswith("/containers/create") and resp.status == 201:
                ids["containers"].append(json.loads(raw)["Id"][:12])
                ids["containers"] = ids["containers"][-20:]
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
            break
        if any(f[0] == "crash" for f in findings):
            break
        if i % 5000 == 0 and not alive(a.socket, a.pid):
            findings.append(("crash", method, url[:200], None, "daemon gone"))
            break
    elapsed = time.time() - t0
    if not alive(a.socket, a.pid):
        findings.append(("crash", "", "", None, "daemon not answering /_ping at the end"))
    kinds = {k: sum(1 for f in findings if f[0] == k)
             for k in ("crash", "hang", "panic", "bad error shape", "connection error")}
    summary = (f"{counts['sent']:,} requests in {elapsed:.0f} s ({counts['sent'] / max(elapsed, 1e-9):.0f}/s), seed {a.seed}: "
               f"{counts.get('2xx', 0):,} 2xx, {counts.get('4xx', 0):,} 4xx, {counts.get('5xx', 0):,} 5xx; "
               f"{kinds['crash']} crashes, {kinds['hang']} hung, {kinds['panic']} handler panics, "
               f"{kinds['bad error shape']} errors without Docker's shape; "
               f"{kinds['connection error']} connection errors {errors or ''}")
    print(summary)
    for f in findings[:30]:
        print("FINDING", f)
    if a.write:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(f"{ROOT}/benches/RESULTS.md", "a") as out:
            out.write(f"\n## HTTP fuzz campaign ({stamp})\n\nCommand: `python3 benches/fuzz/http_fuzz.py --socket ... "
                      f"--requests {a.requests} --seed {a.seed} --write` against a debug berthd with the busybox "
                      f"image as `bb`.\n\n{summary}.\n")
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
