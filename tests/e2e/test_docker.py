"""docker push/pull through a private dockerd against the registry."""
import json
import os
import re

import imagetools as it
from e2eutil import get_manifest


def test_docker_push_pull(registry, skopeo, docker, workdir):
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="docker")
    archive = os.path.join(workdir, "image.tar")
    local = f"berth-e2e/docker-src-{registry.port}:v1"
    skopeo.copy(src.ref, f"docker-archive:{archive}:{local}")
    out = docker("load", "-i", archive).stdout.decode()
    assert local in out, out

    target = f"{registry.host}/ns/docker-app:v1"
    docker("tag", local, target)
    out = docker("push", target, timeout=300).stdout.decode()
    m = re.search(r"digest: (sha256:[0-9a-f]{64})", out)
    assert m, out
    pushed = m.group(1)

    # skopeo and the HTTP API see the same digest docker reported.
    assert skopeo.inspect(f"docker://{target}")["Digest"] == pushed
    r = get_manifest(registry.url, "ns/docker-app", "v1")
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == pushed
    assert it.sha256_digest(r.content) == pushed
    assert r.headers["Content-Type"] == it.DOCKER_MANIFEST

    docker("rmi", target, local)
    assert docker("image", "inspect", target, check=False).returncode != 0
    docker("pull", target, timeout=300)
    info = json.loads(docker("image", "inspect", target).stdout)[0]
    assert f"{registry.host}/ns/docker-app@{pushed}" in info["RepoDigests"]
    assert info["RootFS"]["Layers"] == src.images[0].diff_ids
    assert info["Architecture"] == "amd64"
    docker("rmi", target)
