"""docker-py's inspect_distribution against berthd (DOCKER_HOST): the descriptor and
platforms of a pushed image, and Docker's NotFound for a tag the registry lacks.
Usage: distribution.py IMAGE DIGEST MISSING_IMAGE"""
import sys

import docker

image, digest, missing = sys.argv[1:4]
c = docker.from_env()
d = c.api.inspect_distribution(image)
assert d["Descriptor"]["digest"] == digest, d
assert d["Descriptor"]["size"] > 0, d
assert {"architecture": "amd64", "os": "linux"} in d["Platforms"], d
rd = c.images.get_registry_data(image)
assert rd.id == digest and rd.has_platform("linux/amd64"), rd.attrs
try:
    c.api.inspect_distribution(missing)
    raise SystemExit("inspect_distribution of a missing tag succeeded")
except docker.errors.NotFound as e:
    assert "manifest unknown" in str(e), e
print("distribution API: ok")
