"""Server memory must not grow with blob size: stream a 1 GiB blob in and out."""
import hashlib
import http.client
import random

import requests

from e2eutil import berth_only, start_upload, path_of, with_digest

MiB = 1024 * 1024
CHUNK = MiB


def _chunks(seed: int, size: int):
    rng = random.Random(seed)
    left = size
    while left:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def _digest(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for c in _chunks(seed, size):
        h.update(c)
    return "sha256:" + h.hexdigest()


def _push_pull(srv, repo: str, seed: int, size: int) -> None:
    digest = _digest(seed, size)
    loc = start_upload(srv.url, repo)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    try:
        conn.putrequest("PUT", with_digest(path_of(loc), digest), skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        for c in _chunks(seed, size):
            conn.send(c)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 201, (resp.status, body)
        assert resp.getheader("Docker-Content-Digest") == digest
    finally:
        conn.close()

    r = requests.head(f"{srv.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == size
    h, n = hashlib.sha256(), 0
    with requests.get(f"{srv.url}/v2/{repo}/blobs/{digest}", stream=True, timeout=600) as r:
        assert r.status_code == 200, r.status_code
        for c in r.iter_content(CHUNK):
            h.update(c)
            n += len(c)
    assert n == size
    assert "sha256:" + h.hexdigest() == digest


@berth_only
def test_rss_does_not_grow_with_blob_size(make_server):
    srv = make_server()
    _push_pull(srv, "mem/small", 64, 64 * MiB)
    hwm_small = srv.vm_hwm_bytes()
    _push_pull(srv, "mem/big", 1024, 1024 * MiB)
    hwm_big = srv.vm_hwm_bytes()
    print(f"peak RSS after 64 MiB: {hwm_small / MiB:.1f} MiB, after 1 GiB: {hwm_big / MiB:.1f} MiB")
    assert hwm_big < 128 * MiB, f"peak RSS {hwm_big / MiB:.1f} MiB >= 128 MiB"
    assert hwm_big - hwm_small <= 32 * MiB, (
        f"peak RSS grew from {hwm_small / MiB:.1f} MiB (64 MiB blob) to "
        f"{hwm_big / MiB:.1f} MiB (1 GiB blob)")
