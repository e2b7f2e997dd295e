"""docker-py against berthd in one isolation mode: get_archive/put_archive on an anonymous
volume of a running container, container.update(mem_limit=...) and the inspect keys
clients index directly. Prints the container id; the caller checks the live limit.

usage: DOCKER_HOST=... archive_update_inspect.py IMAGE ISOLATION
"""
import io
import sys
import tarfile
import time

import docker

img, iso = sys.argv[1], sys.argv[2]
client = docker.from_env(timeout=120)
api = client.api
cid = api.create_container(
    img,
    'sh -c "echo data > /vol1/data.txt; exec sleep 1000"',
    volumes=["/vol1"],
    host_config=api.create_host_config(isolation=iso),
)["Id"]
api.start(cid)

# get_archive on the volume (the main process writes the file once it runs).
deadline = time.time() + 60
while True:
    try:
        bits, stat = api.get_archive(cid, "/vol1/data.txt")
        break
    except docker.errors.NotFound:
        assert time.time() < deadline, "/vol1/data.txt never appeared"
        time.sleep(0.2)
with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as t:
    got = t.extractfile("data.txt").read()
assert got == b"data\n", got
assert stat["name"] == "data.txt" and stat["size"] == 5, stat

# put_archive into the volume: the container sees it through its mount.
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    info = tarfile.TarInfo("in.txt")
    info.size = 3
    t.addfile(info, io.BytesIO(b"py\n"))
assert api.put_archive(cid, "/vol1", buf.getvalue())
out = api.exec_start(api.exec_create(cid, ["cat", "/vol1/in.txt"])["Id"])
assert out == b"py\n", out

# container.update: the record at once (the caller checks the cgroup).
c = client.containers.get(cid)
c.update(mem_limit="64m", memswap_limit="128m")
c.reload()
assert c.attrs["HostConfig"]["Memory"] == 64 << 20, c.attrs["HostConfig"]["Memory"]

# Keys clients index without checking.
info = api.inspect_container(cid)
# dockerd on Linux says "" (default); berth's microVMs say "hyperv", the API enum's
# hypervisor isolation (typed clients reject values outside it).
want = {"process": "", "microvm": "hyperv"}[iso]
assert info["HostConfig"]["Isolation"] == want, info["HostConfig"]["Isolation"]
assert "MacAddress" in info["NetworkSettings"], sorted(info["NetworkSettings"])
assert isinstance(info["NetworkSettings"]["MacAddress"], str)
print(cid)
