"""ORAS artifacts (oras-py SDK): push/pull of an artifact, and a referrer via `subject`."""
import hashlib
import json
import os

import oras.oci
import oras.provider
import requests

from e2eutil import berth_only, get_blob, get_manifest, push_blob_monolithic, put_manifest

ARTIFACT_TYPE = "application/vnd.berth.e2e.sbom"
SIG_TYPE = "application/vnd.berth.e2e.signature"
OTHER_TYPE = "application/vnd.berth.e2e.attestation"
VEX_TYPE = "application/vnd.berth.e2e.vex"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _client(registry):
    return oras.provider.Registry(hostname=registry.host, insecure=True, tls_verify=False,
                                  auth_backend="basic")


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _push_artifact(client, workdir, target, name, content, artifact_type, subject=None):
    """Push one file with oras-py; the config media type carries the artifact type."""
    d = os.path.join(workdir, "push-" + name)
    os.makedirs(d)
    f = _write(os.path.join(d, name), content)
    cfg = _write(os.path.join(d, "config.json"), json.dumps({"kind": name}).encode())
    cwd = os.getcwd()
    os.chdir(d)  # oras-py validates that pushed paths are under the working directory
    try:
        resp = client.push(target=target, files=[f"{name}:application/vnd.berth.e2e.file"],
                           manifest_config=f"{cfg}:{artifact_type}", subject=subject, quiet=True)
    finally:
        os.chdir(cwd)
    assert resp.status_code == 201, (resp.status_code, resp.text)
    return resp.headers["Docker-Content-Digest"]


def _manifest_subject(registry, repo, ref):
    r = requests.head(f"{registry.url}/v2/{repo}/manifests/{ref}",
                      headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert r.status_code == 200, r.status_code
    return oras.oci.Subject(mediaType=OCI_MANIFEST, digest=r.headers["Docker-Content-Digest"],
                            size=int(r.headers["Content-Length"]))


def test_oras_push_pull(registry, workdir):
    client = _client(registry)
    content = os.urandom(100_000) + b"sbom\n"
    target = f"{registry.host}/artifacts/app:sbom"
    digest = _push_artifact(client, workdir, target, "sbom.json", content, ARTIFACT_TYPE)

    out = os.path.join(workdir, "pulled")
    files = client.pull(target=target, outdir=out)
    assert [os.path.basename(f) for f in files] == ["sbom.json"]
    with open(files[0], "rb") as f:
        assert f.read() == content

    manifest = client.get_manifest(target)
    assert manifest["config"]["mediaType"] == ARTIFACT_TYPE
    r = get_manifest(registry.url, "artifacts/app", digest)
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == digest.split(":")[1]
    layer = manifest["layers"][0]
    assert layer["digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert get_blob(registry.url, "artifacts/app", layer["digest"]).content == content


@berth_only
def test_oras_referrers(registry, workdir):
    client = _client(registry)
    repo = "artifacts/signed"
    base_content = b"the thing being signed\n" * 100
    base_digest = _push_artifact(client, workdir, f"{registry.host}/{repo}:v1", "payload.txt",
                                 base_content, ARTIFACT_TYPE)

    subject = _manifest_subject(registry, repo, "v1")
    assert subject.digest == base_digest
    sig_digest = _push_artifact(client, workdir, f"{registry.host}/{repo}:sig",
                                "signature.sig", b"signature bytes", SIG_TYPE, subject=subject)
    att_digest = _push_artifact(client, workdir, f"{registry.host}/{repo}:att",
                                "attestation.json", b'{"ok":true}', OTHER_TYPE, subject=subject)
    # A referrer with an explicit artifactType and the empty config, built by hand.
    empty = b"{}"
    empty_digest = push_blob_monolithic(registry.url, repo, empty)
    note = b"a note"
    note_digest = push_blob_monolithic(registry.url, repo, note)
    vex_manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": VEX_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest,
                   "size": 2},
        "layers": [{"mediaType": "text/plain", "digest": note_digest, "size": len(note)}],
        "subject": {"mediaType": subject.mediaType, "digest": subject.digest,
                    "size": subject.size},
        "annotations": {"org.example.kind": "vex"},
    }).encode()
    vex_digest = put_manifest(registry.url, repo, "sha256:" + hashlib.sha256(vex_manifest).hexdigest(),
                              vex_manifest, OCI_MANIFEST)
    # An unrelated artifact (no subject) must not show up as a referrer.
    _push_artifact(client, workdir, f"{registry.host}/{repo}:other", "other.txt", b"x", SIG_TYPE)

    pulled = client.pull(target=f"{registry.host}/{repo}:v1", outdir=os.path.join(workdir, "out"))
    with open(pulled[0], "rb") as f:
        assert f.read() == base_content

    sig_manifest = client.get_manifest(f"{registry.host}/{repo}@{sig_digest}")
    assert sig_manifest["subject"]["digest"] == base_digest

    url = f"{registry.url}/v2/{repo}/referrers/{base_digest}"
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/vnd.oci.image.index.v1+json")
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert set(by_digest) == {sig_digest, att_digest, vex_digest}
    assert by_digest[vex_digest]["artifactType"] == VEX_TYPE
    assert by_digest[vex_digest]["annotations"] == {"org.example.kind": "vex"}
    assert by_digest[vex_digest]["size"] == len(vex_manifest)
    assert by_digest[sig_digest]["artifactType"] == SIG_TYPE
    assert by_digest[att_digest]["artifactType"] == OTHER_TYPE
    assert by_digest[sig_digest]["mediaType"] == OCI_MANIFEST
    sig_raw = get_manifest(registry.url, repo, sig_digest).content
    assert by_digest[sig_digest]["size"] == len(sig_raw)

    r = requests.get(url, params={"artifactType": SIG_TYPE}, timeout=30)
    assert r.status_code == 200
    assert r.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [sig_digest]

    r = requests.get(url, params={"artifactType": "application/vnd.none"}, timeout=30)
    assert r.status_code == 200
    assert r.json()["manifests"] == []

    # A digest nothing refers to yields an empty index, not an error.
    r = requests.get(f"{registry.url}/v2/{repo}/referrers/{sig_digest}", timeout=30)
    assert r.status_code == 200
    assert r.json()["manifests"] == []
