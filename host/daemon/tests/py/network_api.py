"""docker-py's network API against berthd (DOCKER_HOST): create with IPAM, connect with
alias and static address, name resolution, inspect, list filters, disconnect, remove,
prune, Docker's NotFound, and a dual-stack network (enable_ipv6, ipv6_address).
Usage: network_api.py IMAGE"""
import sys

import docker

img = sys.argv[1]
c = docker.from_env()
n = c.networks.create(
    "pynet",
    driver="bridge",
    labels={"team": "py"},
    ipam=docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet="10.77.0.0/24", gateway="10.77.0.254")]
    ),
)
assert n.attrs["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254"}], n.attrs
srv = c.containers.run(
    img,
    ["sh", "-c", "mkdir -p /w && echo from-py > /w/index.html && exec httpd -f -p 80 -h /w"],
    name="pysrv",
    detach=True,
    network="pynet",
)
cli = c.containers.run(img, "sleep 100", name="pycli", detach=True)
n.connect(cli, aliases=["cli-alias"], ipv4_address="10.77.0.77")
n.reload()
assert sorted(x.name for x in n.containers) == ["pycli", "pysrv"], n.attrs["Containers"]
out = b""
for _ in range(10):
    rc, out = cli.exec_run(["sh", "-c", "timeout 5 wget -qO- http://pysrv/; exit $?"])
    if rc == 0:
        break
assert out == b"from-py\n", out
cli.reload()
assert cli.attrs["NetworkSettings"]["Networks"]["pynet"]["IPAddress"] == "10.77.0.77"
assert "cli-alias" in cli.attrs["NetworkSettings"]["Networks"]["pynet"]["Aliases"]
n.disconnect(cli)
cli.reload()
assert "pynet" not in cli.attrs["NetworkSettings"]["Networks"]
assert [x.id for x in c.networks.list(filters={"label": "team=py"})] == [n.id]
assert [x.name for x in c.networks.list(names=["pynet"])] == ["pynet"]
for x in (srv, cli):
    x.remove(force=True)
n.remove()
try:
    c.networks.get("pynet")
    raise SystemExit("pynet still there")
except docker.errors.NotFound:
    pass
c.networks.create("unused")
assert c.networks.prune()["NetworksDeleted"] == ["unused"]
six = c.networks.create(
    "py6",
    enable_ipv6=True,
    ipam=docker.types.IPAMConfig(
        pool_configs=[
            docker.types.IPAMPool(subnet="10.78.0.0/24"),
            docker.types.IPAMPool(subnet="fd00:78::/64"),
        ]
    ),
)
assert six.attrs["EnableIPv6"] is True, six.attrs
assert [p["Subnet"] for p in six.attrs["IPAM"]["Config"]] == ["10.78.0.0/24", "fd00:78::/64"], six.attrs
cli6 = c.containers.run(img, "sleep 100", name="pycli6", detach=True)
six.connect(cli6, ipv6_address="fd00:78::78")
cli6.reload()
ep = cli6.attrs["NetworkSettings"]["Networks"]["py6"]
assert ep["GlobalIPv6Address"] == "fd00:78::78", ep
assert ep["IPv6Gateway"] == "fd00:78::1", ep
cli6.remove(force=True)
six.remove()
print("docker-py network API: ok")
