#!/usr/bin/env python3
"""Writes the seed corpus (a few valid inputs per target) into seeds/<target>/.

The seeds are committed; this script is how they were made, rerun it after changing
it. The fuzz runs never write into seeds/ (scripts/fuzz-smoke.sh gives libFuzzer a
scratch corpus first)."""
import gzip
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tar_bytes(members, fmt=tarfile.PAX_FORMAT):
    """members: (TarInfo fields, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return buf.getvalue()


# create_body: what `docker run` / `docker create` send.
write("create_body", "run.json", json.dumps({
    "Image": "busybox", "Cmd": ["sh", "-c", "echo hi"], "Env": ["A=1"], "Tty": False,
    "Labels": {"a": "b"}, "ExposedPorts": {"80/tcp": {}},
    "HostConfig": {"Memory": 67108864, "MemorySwap": 134217728, "CpusetCpus": "0-1",
                   "NanoCpus": 500000000, "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                   "Isolation": "microvm", "CgroupnsMode": "private", "PidMode": "host",
                   "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
                   "Sysctls": {"net.ipv4.ip_forward": "1"},
                   "Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/n", "CgroupPermissions": "rw"}],
                   "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
                   "Binds": ["/tmp:/mnt:ro"], "CgroupParent": "/berth"}}))
write("create_body", "minimal.json", '{"Image":"bb","Cmd":["true"]}')
write("create_body", "ipc.json", json.dumps({
    "Image": "bb", "HostConfig": {"IpcMode": "container:web", "UTSMode": "host", "OomScoreAdj": -500,
                                  "ShmSize": 1048576, "CpuPeriod": 100000, "CpuQuota": 50000,
                                  "BlkioWeight": 300, "MemorySwappiness": 10, "AutoRemove": True}}))
write("create_body", "name.txt", "/web-1")
write("create_body", "cpuset.txt", "0-2,4")

# filters: both JSON forms.
write("filters", "map.json", '{"dangling":{"true":true},"label":{"a=b":true,"c":false}}')
write("filters", "legacy.json", '{"label":["a=b","com.example"],"label!":["x"],"name":["web"]}')
write("filters", "empty.json", "{}")

# dockerfile: the reference's forms.
write("dockerfile", "multistage", """# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS build
ENV A=1 B="two words" \\
    C=${A:-x}
LABEL org.example="v 1"
RUN echo "$A" && \\
  # a comment inside
  echo done
COPY --chown=1:1 a b /dst/
WORKDIR /app
FROM scratch
COPY --from=build /app /app
ADD ["x y", "/z"]
EXPOSE 80/tcp 53/udp
VOLUME ["/data"]
USER 1000:1000
HEALTHCHECK --interval=5s CMD ["true"]
ONBUILD RUN echo child
STOPSIGNAL SIGTERM
SHELL ["/bin/sh", "-c"]
ENTRYPOINT ["/app"]
CMD --help
""")
write("dockerfile", "escape", "# escape=`\nFROM bb\nRUN dir c:\\ `\n  && echo `$HOME\nENV legacy value with spaces\n")
write("dockerfile", "healthcheck-none", "FROM bb\nHEALTHCHECK NONE\nMAINTAINER me\nARG X\nARG Y=2\n")

# agent_protocol: frames as the host and the agent send them, then an export request.
def frame(kind, ident, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return struct.pack(">BII", kind, ident, len(payload)) + payload

write("agent_protocol", "handshake",
      frame(1, 0, json.dumps({"magic": "berth-agent", "version": 1, "client": "berthd"}))
      + frame(2, 0, json.dumps({"result": "ok", "version": 1, "agent_version": "0.1.0", "agent_pid": 1})))
write("agent_protocol", "session",
      frame(3, 7, json.dumps({"op": "subscribe", "process": 0}))
      + frame(19, 0, struct.pack(">I", 65536))
      + frame(16, 0, b"hello\n") + frame(17, 0, b"oops\n")
      + frame(5, 0, json.dumps({"type": "exited", "process": 0, "status": {"code": 0}}))
      + frame(18, 0, b"") + frame(20, 0, b"input") + frame(21, 0, b""))
write("agent_protocol", "export-request", '{"what":"archive","args":["stat","/etc","--container-root"]}\n')
write("agent_protocol", "export-changes", '{"what":"changes","upper":"/run/vm/rw/upper"}\n')
# The archive child's frames from a guest: a stat answer (stdout), a warning, the exit.
stat = json.dumps({"name": "etc", "size": 4096, "mode": (1 << 31) | 0o755,
                   "mtime_unix_nanos": 1700000000 * 10**9, "link_target": ""}).encode()
write("agent_protocol", "archive-stat",
      struct.pack(">BI", 1, len(stat)) + stat + struct.pack(">BI", 2, 2) + b"w\n"
      + struct.pack(">BIi", 3, 4, 0))

# layer_tar: a layer with every entry kind the unpacker handles.
layer = tar_bytes([
    ({"name": "./", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
    ({"name": "etc", "type": tarfile.DIRTYPE, "mode": 0o755, "mtime": 1}, None),
    ({"name": "etc/passwd", "mode": 0o644, "uid": 0}, b"root:x:0:0::/root:/bin/sh\n"),
    ({"name": "etc/link", "type": tarfile.SYMTYPE, "linkname": "passwd"}, None),
    ({"name": "etc/hard", "type": tarfile.LNKTYPE, "linkname": "etc/passwd"}, None),
    ({"name": "bin/sh", "mode": 0o4755, "uid": 1000, "gid": 1000,
      "pax_headers": {"SCHILY.xattr.user.note": "hi"}}, b"#!\n"),
    ({"name": "var/.wh.cache", "mode": 0o644}, b""),
    ({"name": "tmp/.wh..wh..opq", "mode": 0o644}, b""),
    ({"name": "run/fifo", "type": tarfile.FIFOTYPE}, None),
])
write("layer_tar", "layer.tar", layer)
write("layer_tar", "gnu.tar", tar_bytes([
    ({"name": "d/" + "long" * 40, "mode": 0o600}, b"x"),
    ({"name": "abs", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None),
], fmt=tarfile.GNU_FORMAT))
# The same layer compressed as registries and `docker import` send it.
write("layer_tar", "layer.tar.gz", gzip.compress(layer, mtime=0))
write("layer_tar", "layer.tar.xz", lzma.compress(layer))
if shutil.which("zstd"):
    write("layer_tar", "layer.tar.zst", subprocess.run(["zstd", "-q", "-c"], input=layer, check=True, stdout=subprocess.PIPE).stdout)
else:
    print("seeds.py: no zstd binary, layer.tar.zst not written")
write("layer_tar", "ustar.tar", tar_bytes([({"name": "a/b/c", "mode": 0o644}, b"abc")], fmt=tarfile.USTAR_FORMAT))

# image_archive: `docker save` (manifest.json) and OCI layout (index.json) archives.
small_layer = tar_bytes([({"name": "hello.txt", "mode": 0o644}, b"hi\n")], fmt=tarfile.USTAR_FORMAT)
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
write("image_archive", "docker-save.tar", tar_bytes([
    ({"name": "manifest.json", "mode": 0o644},
     json.dumps([{"Config": "cfg.json", "RepoTags": ["bb:latest"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode()),
    ({"name": "cfg.json", "mode": 0o644}, config),
    ({"name": "l1/layer.tar", "mode": 0o644}, small_layer),
    ({"name": "l2", "type": tarfile.DIRTYPE}, None),
    ({"name": "l2/layer.tar", "type": tarfile.SYMTYPE, "linkname": "../l1/layer.tar"}, None),
], fmt=tarfile.USTAR_FORMAT))
h = "a" * 64
write("image_archive", "oci-layout.tar", tar_bytes([
    ({"name": "oci-layout", "mode": 0o644}, b'{"imageLayoutVersion":"1.0.0"}'),
    ({"name": "index.json", "mode": 0o644}, json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + h, "size": 2,
         "annotations": {"io.containerd.image.name": "docker.io/library/bb:latest"}}]}).encode()),
    ({"name": "blobs/sha256/" + h, "mode": 0o644}, small_layer),
    ({"name": "blobs/sha256/" + "b" * 64, "type": tarfile.LNKTYPE, "linkname": "blobs/sha256/" + h}, None),
], fmt=tarfile.USTAR_FORMAT))

# seccomp_profile: Docker's profile format, with every action, operator and condition.
write("seccomp_profile", "docker-format.json", json.dumps({
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
        {"name": "personality", "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
         "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_GE"},
                  {"index": 1, "value": 3, "op": "SCMP_CMP_LT"}]},
        {"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_NE"}]},
        {"names": ["tkill"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["getppid"], "action": "SCMP_ACT_TRACE", "errnoRet": 5},
        {"names": ["uname"], "action": "SCMP_ACT_TRAP", "excludes": {"arches": ["arm64"]}},
        {"names": ["getpid"], "action": "SCMP_ACT_KILL_THREAD",
         "args": [{"index": 5, "value": 18446744073709551615, "op": "SCMP_CMP_GT"},
                  {"index": 4, "value": 1, "op": "SCMP_CMP_LE"}]},
    ],
}))
write("seccomp_profile", "unconfined.txt", "unconfined")
write("seccomp_profile", "minimal.json", '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":null}')
