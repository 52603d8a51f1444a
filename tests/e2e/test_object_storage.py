"""Blobs in object stores: S3 (`storage.s3`, on the throwaway S3 server of scripts/s3.sh), Azure
Blob Storage (`storage.azure`, on Azurite, scripts/azurite.sh) and Google Cloud Storage
(`storage.gcs`, on gcp-storage-emulator, scripts/gcs.sh) and OpenStack Swift (`storage.swift`,
on the single-node Swift of scripts/swift.sh, TempAuth), with registry:2's keys.
skopeo and docker push and pull; a restarted server finds its blobs; no secret key is logged.
On S3 the objects sit under registry:2's keys below `rootdirectory`, and blob downloads are
redirected (307) to presigned URLs that serve the exact bytes, as registry:2 does, unless
`storage.redirect.disable`; on Azure they are streamed through Berth."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest
import requests

import imagetools as it
from e2eutil import REPO_ROOT, berth_only, docker_cli, docker_load, docker_round_trip, free_port

pytestmark = berth_only

SECRET = "e2e-secret-key-" + uuid.uuid4().hex


AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def store_server(variable: str, script: str):
    """CI's server (its endpoint in `variable`), or one of our own started by `script`."""
    if os.environ.get(variable):
        yield os.environ[variable]
        return
    d = tempfile.mkdtemp(prefix="berth-store-")
    path = os.path.join(REPO_ROOT, "scripts", script)
    p = subprocess.run([path, "start", d, str(free_port())], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    yield p.stdout.strip().splitlines()[-1]
    subprocess.run([path, "stop", d], capture_output=True, timeout=30)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_endpoint():
    yield from store_server("BERTH_TEST_S3", "s3.sh")


@pytest.fixture(scope="module")
def azure_endpoint():
    yield from store_server("BERTH_TEST_AZURE", "azurite.sh")


@pytest.fixture(scope="module")
def gcs_endpoint():
    yield from store_server("BERTH_TEST_GCS", "gcs.sh")


@pytest.fixture(scope="module")
def swift_auth_url():
    yield from store_server("BERTH_TEST_SWIFT", "swift.sh")


def azure_env(endpoint: str, prefix: str) -> dict:
    return {"REGISTRY_STORAGE": "azure", "REGISTRY_STORAGE_AZURE_ACCOUNTNAME": "devstoreaccount1",
            "REGISTRY_STORAGE_AZURE_ACCOUNTKEY": AZURITE_KEY, "REGISTRY_STORAGE_AZURE_CONTAINER": "berth-test",
            "REGISTRY_STORAGE_AZURE_SERVICEURL": endpoint, "REGISTRY_STORAGE_AZURE_ROOTDIRECTORY": prefix}


def push_pull_restart(srv, workdir, skopeo, docker, salt: str, secret: str):
    """skopeo pushes and pulls, docker pushes and pulls, and after a restart the image is
    still there; the store's secret is not in the log."""
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt=salt, random_layer_bytes=3 << 20)
    skopeo.copy(src.ref, f"docker://{srv.host}/team/app:1")
    out = os.path.join(workdir, "back")
    skopeo.copy(f"docker://{srv.host}/team/app:1", f"oci:{out}:v1")
    with open(os.path.join(out, "index.json")) as f:
        assert json.load(f)["manifests"][0]["digest"] == src.digest
    dk = docker_cli(docker.sock, workdir)
    local, target = f"berth-e2e/{salt}-{srv.port}:v1", f"{srv.host}/team/docker:v1"
    docker_load(skopeo, dk, src, workdir, local, target)
    docker_round_trip(dk, src, local, target)
    srv.stop()
    srv.start()
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{srv.host}/team/app:1").stdout
    assert it.sha256_digest(raw) == src.digest
    assert secret not in open(srv.log_path, "rb").read().decode(errors="replace")
    return src


def test_push_and_pull_with_blobs_in_gcs(gcs_endpoint, make_server, workdir, skopeo, docker):
    # Blobs of one part (the emulator has no multipart uploads): 3 MiB, parts of 10 MiB.
    srv = make_server(env={"REGISTRY_STORAGE": "gcs", "REGISTRY_STORAGE_GCS_BUCKET": "berth-test",
                           "REGISTRY_STORAGE_GCS_ENDPOINT": gcs_endpoint,
                           "REGISTRY_STORAGE_GCS_ROOTDIRECTORY": f"/e2e-{uuid.uuid4().hex[:8]}"})
    src = push_pull_restart(srv, workdir, skopeo, docker, "gcs", "no secret")
    # Downloads are redirected to the store (unsigned URLs: the emulator is anonymous), and
    # the clients above followed them.
    layer = src.images[0].layers[0].digest
    r = requests.get(f"{srv.url}/v2/team/app/blobs/{layer}", allow_redirects=False, timeout=10)
    assert r.status_code == 307 and r.headers["Location"].startswith(gcs_endpoint)
    assert it.sha256_digest(requests.get(r.headers["Location"], timeout=10).content) == layer


def test_push_and_pull_with_blobs_in_azure(azure_endpoint, make_server, workdir, skopeo, docker):
    srv = make_server(env=azure_env(azure_endpoint, f"/e2e-{uuid.uuid4().hex[:8]}"))
    src = push_pull_restart(srv, workdir, skopeo, docker, "azure", AZURITE_KEY)
    # Downloads come through Berth: OpenDAL's Azure URLs would grant write and delete.
    layer = src.images[0].layers[0].digest
    r = requests.get(f"{srv.url}/v2/team/app/blobs/{layer}", allow_redirects=False, timeout=10)
    assert r.status_code == 200 and it.sha256_digest(r.content) == layer


def test_push_and_pull_with_blobs_in_swift(swift_auth_url, make_server, workdir, skopeo, docker):
    prefix = f"/e2e-{uuid.uuid4().hex[:8]}"
    srv = make_server(env={"REGISTRY_STORAGE": "swift", "REGISTRY_STORAGE_SWIFT_AUTHURL": swift_auth_url,
                           "REGISTRY_STORAGE_SWIFT_USERNAME": "test:tester",
                           "REGISTRY_STORAGE_SWIFT_PASSWORD": "testing",
                           "REGISTRY_STORAGE_SWIFT_CONTAINER": "berth-test",
                           "REGISTRY_STORAGE_SWIFT_PREFIX": prefix,
                           "REGISTRY_STORAGE_SWIFT_SECRETKEY": SECRET,
                           "REGISTRY_STORAGE_SWIFT_TEMPURLCONTAINERKEY": "true"})
    src = push_pull_restart(srv, workdir, skopeo, docker, "swift", SECRET)
    # The objects sit where registry:2's Swift driver keeps them, `<prefix>/files/...`.
    login = requests.get(swift_auth_url, headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"},
                         timeout=10)
    storage, token = login.headers["X-Storage-Url"], login.headers["X-Auth-Token"]
    listed = requests.get(f"{storage}/berth-test", params={"prefix": prefix.lstrip("/") + "/files/"},
                          headers={"X-Auth-Token": token}, timeout=10).text.split()
    for d in (b.digest for b in src.images[0].layers):
        hexd = d.split(":")[1]
        assert f"{prefix.lstrip('/')}/files/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data" in listed
    # Downloads are redirected to TempURLs signed with the configured key, which Berth set
    # on the container.
    layer = max(src.images[0].layers, key=lambda b: len(b.data)).digest
    r = requests.get(f"{srv.url}/v2/team/app/blobs/{layer}", allow_redirects=False, timeout=10)
    assert r.status_code == 307 and "temp_url_sig=" in r.headers["Location"], r.headers
    assert r.headers["Location"].startswith(storage)
    assert it.sha256_digest(requests.get(r.headers["Location"], timeout=30).content) == layer


def s3_env(endpoint: str, prefix: str, redirect: bool = True) -> dict:
    env = {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_BUCKET": "berth-test",
           "REGISTRY_STORAGE_S3_REGION": "us-east-1", "REGISTRY_STORAGE_S3_REGIONENDPOINT": endpoint,
           "REGISTRY_STORAGE_S3_ACCESSKEY": "e2e", "REGISTRY_STORAGE_S3_SECRETKEY": SECRET,
           "REGISTRY_STORAGE_S3_ROOTDIRECTORY": prefix}
    if not redirect:
        env["REGISTRY_STORAGE_REDIRECT_DISABLE"] = "true"
    return env


def keys_under(endpoint: str, prefix: str) -> list[str]:
    r = requests.get(f"{endpoint}/berth-test", params={"list-type": "2", "prefix": prefix.lstrip("/") + "/"},
                     timeout=10)
    r.raise_for_status()
    return re.findall(r"<Key>([^<]+)</Key>", r.text)


def test_push_and_pull_with_blobs_in_s3(s3_endpoint, make_server, workdir, skopeo, docker):
    prefix = f"/e2e-{uuid.uuid4().hex[:8]}"
    srv = make_server(env=s3_env(s3_endpoint, prefix))
    src = push_pull_restart(srv, workdir, skopeo, docker, "s3", SECRET)

    # The bytes are in the bucket, under registry:2's keys.
    keys = keys_under(s3_endpoint, prefix)
    for d in (b.digest for b in src.images[0].layers):
        hexd = d.split(":")[1]
        assert f"{prefix.lstrip('/')}/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data" in keys, keys

    # A download is a redirect to a presigned URL of the store, which serves the exact bytes.
    big = max(src.images[0].layers, key=lambda b: len(b.data))
    layer = big.digest
    r = requests.get(f"{srv.url}/v2/team/app/blobs/{layer}", allow_redirects=False, timeout=10)
    assert r.status_code == 307, r.text
    assert r.headers["Docker-Content-Digest"] == layer
    location = r.headers["Location"]
    assert location.startswith(s3_endpoint) and "X-Amz-Signature=" in location
    assert it.sha256_digest(requests.get(location, timeout=30).content) == layer
    # HEAD is answered by Berth itself, and an unknown blob is not redirected.
    h = requests.head(f"{srv.url}/v2/team/app/blobs/{layer}", timeout=10)
    assert h.status_code == 200 and int(h.headers["Content-Length"]) == len(big.data)
    unknown = requests.get(f"{srv.url}/v2/team/app/blobs/sha256:{'0' * 64}", allow_redirects=False, timeout=10)
    assert unknown.status_code == 404



def test_redirects_can_be_disabled(s3_endpoint, make_server, workdir, skopeo):
    prefix = f"/e2e-{uuid.uuid4().hex[:8]}"
    srv = make_server(env=s3_env(s3_endpoint, prefix, redirect=False))
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="s3-no-redirect")
    skopeo.copy(src.ref, f"docker://{srv.host}/team/app:1")
    layer = src.images[0].layers[0].digest
    r = requests.get(f"{srv.url}/v2/team/app/blobs/{layer}", allow_redirects=False, timeout=10)
    assert r.status_code == 200
    assert it.sha256_digest(r.content) == layer
    ranged = requests.get(f"{srv.url}/v2/team/app/blobs/{layer}", headers={"Range": "bytes=1-4"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == r.content[1:5]
