#!/usr/bin/env python3
"""Build a docker-archive image: a busybox layer plus N layers of random data.

usage: mkimage.py OUT.tar REPO:TAG LAYERS LAYER_MB
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data, kind, link in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, link
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o755
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def main():
    out, ref, n, mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    bb = open("/bin/busybox", "rb").read()
    layers = [layer_tar([("bin", None, "dir", None), ("bin/busybox", bb, "file", None),
                         ("bin/sh", None, "sym", "busybox"), ("etc", None, "dir", None)])]
    for i in range(n):
        layers.append(layer_tar([("data", None, "dir", None),
                                 (f"data/blob{i}", os.urandom(mb << 20), "file", None)]))
    diffs = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2025-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diffs},
        "history": [{"created": "2025-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
    }).encode()
    cname = hashlib.sha256(config).hexdigest() + ".json"
    with tarfile.open(out, "w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1700000000
            t.addfile(ti, io.BytesIO(data))
        paths = []
        for d, l in zip(diffs, layers):
            p = d[7:] + "/layer.tar"
            add(p, l)
            paths.append(p)
        add(cname, config)
        add("manifest.json", json.dumps([{"Config": cname, "RepoTags": [ref], "Layers": paths}]).encode())
    print(sum(len(l) for l in layers))


if __name__ == "__main__":
    main()
