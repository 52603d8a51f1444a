"""podman pull/push/pull of a single-arch image against the registry."""
import json
import os

import imagetools as it
from e2eutil import get_manifest


def _inspect(podman, ref):
    return json.loads(podman("image", "inspect", ref).stdout)[0]


def test_podman_push_pull(registry, skopeo, podman, workdir):
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="podman")
    seed = f"{registry.host}/ns/seed:v1"
    skopeo.copy(src.ref, f"docker://{seed}", "--preserve-digests")

    # Pull what skopeo pushed: podman must see the exact manifest digest.
    podman("pull", "--tls-verify=false", seed)
    info = _inspect(podman, seed)
    assert info["Digest"] == src.digest
    assert f"{registry.host}/ns/seed@{src.digest}" in info["RepoDigests"]
    assert info["RootFS"]["Layers"] == src.images[0].diff_ids

    # Push under a new name; the digest podman reports is what the registry serves.
    target = f"{registry.host}/ns/podman-app:v1"
    podman("tag", seed, target)
    df = os.path.join(workdir, "podman.digest")
    podman("push", "--tls-verify=false", "--digestfile", df, target)
    with open(df) as f:
        pushed = f.read().strip()
    r = get_manifest(registry.url, "ns/podman-app", "v1")
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == pushed
    assert it.sha256_digest(r.content) == pushed
    assert skopeo.inspect(f"docker://{target}")["Digest"] == pushed

    # Remove everything locally and pull it back.
    podman("rmi", "--force", seed, target)
    assert podman("image", "exists", target, check=False).returncode != 0
    podman("pull", "--tls-verify=false", target)
    info = _inspect(podman, target)
    assert info["Digest"] == pushed
    assert f"{registry.host}/ns/podman-app@{pushed}" in info["RepoDigests"]
    assert info["RootFS"]["Layers"] == src.images[0].diff_ids
    assert info["Architecture"] == "amd64"
