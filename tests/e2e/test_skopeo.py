"""skopeo against the registry: OCI, Docker v2s2, multi-arch, cross-repo mount, tags, delete."""
import json
import os

import requests

import imagetools as it
from e2eutil import get_blob, get_manifest


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _digestfile(workdir, name):
    return os.path.join(workdir, f"{name}.digest")


def test_oci_image_roundtrip(registry, skopeo, workdir):
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="oci-rt")
    dst = f"docker://{registry.host}/ns/app:v1"
    df = _digestfile(workdir, "push")
    skopeo.copy(src.ref, dst, "--preserve-digests", "--digestfile", df)
    assert _read(df).decode().strip() == src.digest

    # The registry serves the exact manifest bytes that were pushed.
    raw = skopeo.inspect_raw(dst)
    assert raw == src.top.data
    r = get_manifest(registry.url, "ns/app", "v1")
    assert r.status_code == 200
    assert r.headers["Docker-Content-Digest"] == src.digest
    assert r.headers["Content-Type"] == it.OCI_MANIFEST
    info = skopeo.inspect(dst)
    assert info["Digest"] == src.digest
    assert info["Architecture"] == "amd64"
    assert info["Layers"] == [l.digest for l in src.images[0].layers]

    out = os.path.join(workdir, "out")
    skopeo.copy(dst, f"oci:{out}:v1", "--preserve-digests")
    top, blobs = it.read_layout(out)
    assert top == src.digest
    want = src.all_blob_digests()
    assert it.referenced_digests(blobs, top) == want
    for im in src.images:
        for b in (*im.blobs(), im.manifest):
            assert blobs[b.digest] == b.data


def test_docker_v2s2_roundtrip(registry, skopeo, workdir):
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="v2s2-rt")
    dst = f"docker://{registry.host}/ns/docker-app:v1"
    df = _digestfile(workdir, "push")
    skopeo.copy(src.ref, dst, "--format", "v2s2", "--digestfile", df)
    pushed = _read(df).decode().strip()

    raw = skopeo.inspect_raw(dst)
    assert it.sha256_digest(raw) == pushed
    manifest = json.loads(raw)
    assert manifest["mediaType"] == it.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    # gzip layers are re-used byte for byte, only their media type changes.
    assert [l["digest"] for l in manifest["layers"]] == [l.digest for l in src.images[0].layers]
    r = get_manifest(registry.url, "ns/docker-app", "v1")
    assert r.headers["Content-Type"] == it.DOCKER_MANIFEST
    assert r.headers["Docker-Content-Digest"] == pushed

    # Pull back into a dir: layout, which stores manifest and blobs unmodified.
    out = os.path.join(workdir, "out")
    skopeo.copy(dst, f"dir:{out}")
    assert it.sha256_digest(_read(os.path.join(out, "manifest.json"))) == pushed
    for desc in [manifest["config"], *manifest["layers"]]:
        data = _read(os.path.join(out, desc["digest"].split(":")[1]))
        assert it.sha256_digest(data) == desc["digest"]
        assert len(data) == desc["size"]
    config = json.loads(_read(os.path.join(out, manifest["config"]["digest"].split(":")[1])))
    assert config["rootfs"]["diff_ids"] == src.images[0].diff_ids


def test_multiarch_index_roundtrip(registry, skopeo, workdir):
    src = it.write_index_layout(os.path.join(workdir, "src"), "v1", salt="multi")
    dst = f"docker://{registry.host}/ns/multi:v1"
    skopeo.copy(src.ref, dst, "--all", "--preserve-digests")

    raw = skopeo.inspect_raw(dst)
    assert raw == src.top.data
    index = json.loads(raw)
    assert index["mediaType"] == it.OCI_INDEX
    children = [m["digest"] for m in index["manifests"]]
    assert children == [im.digest for im in src.images]
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}
    for im in src.images:
        assert skopeo.inspect_raw(f"docker://{registry.host}/ns/multi@{im.digest}") == im.manifest.data
    r = get_manifest(registry.url, "ns/multi", "v1")
    assert r.headers["Docker-Content-Digest"] == src.digest
    assert r.headers["Content-Type"] == it.OCI_INDEX

    out = os.path.join(workdir, "out")
    skopeo.copy(dst, f"oci:{out}:v1", "--all", "--preserve-digests")
    top, blobs = it.read_layout(out)
    assert top == src.digest
    assert it.referenced_digests(blobs, top) == src.all_blob_digests()


def test_cross_repository_copy(registry, skopeo, workdir):
    src = it.write_image_layout(os.path.join(workdir, "src"), "1", salt="xrepo")
    a = f"docker://{registry.host}/team/a:1"
    b = f"docker://{registry.host}/team/b:1"
    skopeo.copy(src.ref, a, "--preserve-digests")
    skopeo.copy(a, b, "--preserve-digests")

    assert skopeo.inspect_raw(b) == src.top.data
    out = os.path.join(workdir, "out")
    skopeo.copy(b, f"oci:{out}:1", "--preserve-digests")
    top, blobs = it.read_layout(out)
    assert top == src.digest
    assert it.referenced_digests(blobs, top) == src.all_blob_digests()
    for blob in src.images[0].blobs():
        r = get_blob(registry.url, "team/b", blob.digest)
        assert r.status_code == 200 and r.content == blob.data

    # Explicit cross-repository mount into a third repository.
    layer = src.images[0].layers[0]
    r = requests.post(f"{registry.url}/v2/team/c/blobs/uploads/",
                      params={"mount": layer.digest, "from": "team/a"}, timeout=30)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers["Docker-Content-Digest"] == layer.digest
    assert r.headers["Location"].endswith(f"/v2/team/c/blobs/{layer.digest}")
    r = get_blob(registry.url, "team/c", layer.digest)
    assert r.status_code == 200 and r.content == layer.data


def test_list_tags_and_delete(registry, skopeo, workdir):
    repo = f"docker://{registry.host}/ns/tags"
    images = {}
    for tag in ("v1", "v2", "v3"):
        lay = it.write_image_layout(os.path.join(workdir, tag), tag, salt=f"tags-{tag}")
        skopeo.copy(lay.ref, f"{repo}:{tag}", "--preserve-digests")
        images[tag] = lay
    # An extra tag on v1's manifest.
    skopeo.copy(f"{repo}:v1", f"{repo}:latest", "--preserve-digests")

    listing = json.loads(skopeo("list-tags", "--tls-verify=false", repo).stdout)
    assert listing["Repository"] == f"{registry.host}/ns/tags"
    assert sorted(listing["Tags"]) == ["latest", "v1", "v2", "v3"]

    # Delete by tag (skopeo resolves and deletes the manifest).
    skopeo("delete", "--tls-verify=false", f"{repo}:v2")
    p = skopeo("inspect", "--tls-verify=false", "--raw", f"{repo}:v2", check=False, timeout=120)
    assert p.returncode != 0
    assert get_manifest(registry.url, "ns/tags", images["v2"].digest).status_code == 404

    # Delete by digest.
    d3 = images["v3"].digest
    skopeo("delete", "--tls-verify=false", f"{repo}@{d3}")
    p = skopeo("inspect", "--tls-verify=false", "--raw", f"{repo}@{d3}", check=False, timeout=120)
    assert p.returncode != 0
    assert get_manifest(registry.url, "ns/tags", "v3").status_code == 404

    # v1 and its second tag are untouched.
    assert skopeo.inspect_raw(f"{repo}:v1") == images["v1"].top.data
    assert skopeo.inspect_raw(f"{repo}:latest") == images["v1"].top.data
    listing = json.loads(skopeo("list-tags", "--tls-verify=false", repo).stdout)
    assert sorted(listing["Tags"]) == ["latest", "v1"]
