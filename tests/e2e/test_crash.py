"""kill -9 the registry mid-upload; after restart, completed pushes are intact, incomplete
ones are invisible, and the interrupted chunked upload session can be resumed. On the
filesystem + SQLite, and on S3 + PostgreSQL (with BERTH_TEST_POSTGRES)."""
import hashlib
import json
import os
import random
import socket
import subprocess
import uuid

import pytest
import requests

import imagetools as it
from e2eutil import (SERVER_KIND, berth_only, fresh_postgres_database, get_blob, get_manifest, path_of,
                     patch_chunk, push_blob_chunked, push_blob_monolithic, put_manifest, start_upload,
                     stop_process, wait_for, with_digest)
from test_object_storage import s3_endpoint, s3_env  # noqa: F401 (a fixture)

MiB = 1024 * 1024


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _assert_image_intact(registry, skopeo, layout, ref, out_dir):
    assert skopeo.inspect_raw(ref) == layout.top.data
    skopeo.copy(ref, f"oci:{out_dir}:x", "--preserve-digests")
    top, blobs = it.read_layout(out_dir)
    assert top == layout.digest
    assert it.referenced_digests(blobs, top) == layout.all_blob_digests()


def engines_env(request, engines: str) -> dict:
    if engines == "filesystem":
        return {}
    if not os.environ.get("BERTH_TEST_POSTGRES"):
        pytest.skip("needs PostgreSQL (BERTH_TEST_POSTGRES)")
    return {"REGISTRY_BERTH_DATABASE_URL": fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"]),
            **s3_env(request.getfixturevalue("s3_endpoint"), "/crash-" + uuid.uuid4().hex[:12])}


@berth_only
@pytest.mark.parametrize("engines", ["filesystem", "s3+postgres"])
def test_kill9_mid_upload_then_restart(make_server, skopeo, workdir, request, engines):
    srv = make_server(env=engines_env(request, engines))
    repo = "crash/app"
    rng = random.Random(20240601)

    # ---- completed pushes
    blobs = {}
    for i in range(3):
        data = rng.randbytes(256 * 1024 + i)
        blobs[push_blob_monolithic(srv.url, repo, data)] = data
    for i in range(2):
        data = rng.randbytes(3 * MiB + 7 * i)
        blobs[push_blob_chunked(srv.url, repo, data, MiB)] = data
    cfg = it.canonical_json({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}})
    blobs[push_blob_monolithic(srv.url, repo, cfg)] = cfg
    layer_digests = [d for d in blobs if blobs[d] is not cfg]
    manifest = it.canonical_json({
        "schemaVersion": 2, "mediaType": it.OCI_MANIFEST,
        "config": {"mediaType": it.OCI_CONFIG, "digest": _sha(cfg), "size": len(cfg)},
        "layers": [{"mediaType": "application/octet-stream", "digest": d,
                    "size": len(blobs[d])} for d in layer_digests]})
    manifest_digest = put_manifest(srv.url, repo, "done", manifest, it.OCI_MANIFEST)
    assert manifest_digest == _sha(manifest)

    done_img = it.write_image_layout(os.path.join(workdir, "done"), "v1", salt="crash-done")
    done_ref = f"docker://{srv.host}/crash/img:v1"
    skopeo.copy(done_img.ref, done_ref, "--preserve-digests")

    # ---- an interrupted chunked upload: first chunk completes, second is cut mid-stream
    full = rng.randbytes(8 * MiB)
    first, sent_of_second = 2 * MiB, MiB
    loc = start_upload(srv.url, repo)
    loc = patch_chunk(srv.url, loc, full[:first], 0)
    upload_path = path_of(loc)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    head = (f"PATCH {upload_path} HTTP/1.1\r\nHost: {srv.host}\r\n"
            f"Content-Type: application/octet-stream\r\n"
            f"Content-Length: {len(full) - first}\r\n"
            f"Content-Range: {first}-{len(full) - 1}\r\n\r\n").encode()
    sock.sendall(head + full[first:first + sent_of_second])

    # ---- a skopeo copy in flight: a big layer plus small ones
    bg_img = it.write_image_layout(os.path.join(workdir, "bg"), "v1", salt="crash-bg",
                                   n_layers=3, random_layer_bytes=64 * MiB)
    bg_ref = f"docker://{srv.host}/crash/bg:v1"
    bg_log = open(os.path.join(workdir, "bg-skopeo.log"), "wb")
    bg = subprocess.Popen(skopeo.argv("copy", "--insecure-policy", "--dest-tls-verify=false",
                                      "--preserve-digests", bg_img.ref, bg_ref),
                          stdout=bg_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    bg_log.close()
    bg_blobs = {b.digest: b.data for b in bg_img.images[0].blobs()}

    def bg_started():
        if bg.poll() is not None:
            return True
        return any(requests.head(f"{srv.url}/v2/crash/bg/blobs/{d}", timeout=5).status_code == 200
                   for d in bg_blobs)
    try:
        wait_for(bg_started, 120, "background skopeo copy to store its first blob")
    except AssertionError:
        stop_process(bg)
        raise

    # ---- crash
    srv.kill9()
    sock.close()
    try:
        bg.wait(timeout=120)
    except subprocess.TimeoutExpired:
        stop_process(bg)
    bg_completed = bg.returncode == 0

    srv.start()

    # Every completed push reads back bit-identical.
    for digest, data in blobs.items():
        r = get_blob(srv.url, repo, digest)
        assert r.status_code == 200, (digest, r.status_code)
        assert _sha(r.content) == digest and r.content == data
    r = get_manifest(srv.url, repo, "done")
    assert r.status_code == 200 and r.content == manifest
    assert r.headers["Docker-Content-Digest"] == manifest_digest
    _assert_image_intact(srv, skopeo, done_img, done_ref, os.path.join(workdir, "out-done"))

    # The background copy either finished (then it is intact) or left nothing corrupt.
    if bg_completed:
        _assert_image_intact(srv, skopeo, bg_img, bg_ref, os.path.join(workdir, "out-bg"))
    else:
        r = get_manifest(srv.url, "crash/bg", "v1")
        assert r.status_code in (200, 404), r.status_code
        for digest, data in bg_blobs.items():
            rb = get_blob(srv.url, "crash/bg", digest)
            if r.status_code == 200:  # a stored manifest implies all its blobs are stored
                assert rb.status_code == 200, digest
            assert rb.status_code in (200, 404), rb.status_code
            if rb.status_code == 200:
                assert rb.content == data, f"blob {digest} served with wrong content"

    # Nothing that was never completed is readable.
    for partial in (full, full[:first], full[:first + sent_of_second]):
        r = get_blob(srv.url, repo, _sha(partial))
        assert r.status_code == 404, (r.status_code, len(partial))
        assert requests.head(f"{srv.url}/v2/{repo}/blobs/{_sha(partial)}",
                             timeout=30).status_code == 404

    # The interrupted session: resume it (berth persists sessions) or restart it.
    r = requests.get(srv.url + upload_path, timeout=30)
    if r.status_code == 204 or SERVER_KIND == "berth":
        assert r.status_code == 204, (r.status_code, r.text)
        rng_hdr = r.headers["Range"]
        assert rng_hdr.startswith("0-"), rng_hdr
        offset = int(rng_hdr[2:]) + 1
        assert first <= offset <= first + sent_of_second, rng_hdr
        loc = srv.url + path_of(r.headers.get("Location", upload_path))
        loc = patch_chunk(srv.url, loc, full[offset:], offset)
        r = requests.put(with_digest(loc, _sha(full)), timeout=60)
        assert r.status_code == 201, (r.status_code, r.text)
        assert r.headers["Docker-Content-Digest"] == _sha(full)
    else:
        # Only reachable against Distribution (E2E_FORCE_BERTH_TESTS=1): it rejects the
        # session (404 BLOB_UPLOAD_UNKNOWN, or BLOB_UPLOAD_INVALID when the on-disk size
        # disagrees with its state token); the client then starts over.
        assert r.status_code == 404, (r.status_code, r.text)
        codes = [e["code"] for e in r.json()["errors"]]
        assert {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"} & set(codes), codes
        push_blob_chunked(srv.url, repo, full, 3 * MiB)
    r = get_blob(srv.url, repo, _sha(full))
    assert r.status_code == 200 and r.content == full

    # And the restarted server accepts new pushes.
    extra = rng.randbytes(100_000)
    d = push_blob_monolithic(srv.url, repo, extra)
    assert get_blob(srv.url, repo, d).content == extra
    assert json.loads(get_manifest(srv.url, repo, manifest_digest).content)["layers"]
