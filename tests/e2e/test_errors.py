"""Errors as an operator meets them: a disk that fills up mid-push (blob store and SQLite
metadata on the same small tmpfs), blob data lost underneath Berth, and the request id on
every log line written while serving a request.

The rule: a storage problem is never a 500 and never a hang. A full disk answers 507 with
the spec's error JSON and leaves the store exactly as it was (every acknowledged push
still reads back bit-identical, nothing half-written is visible, the space the failed
request used is free again, a restart reads everything); data lost underneath answers
404 BLOB_UNKNOWN and logs an error. Needs root for `mount -t tmpfs` (skipped otherwise).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import datetime

import pytest
import requests

import imagetools as it
from e2eutil import (SERVER_KIND, RegistryServer, get_blob, get_manifest, push_blob_chunked,
                     push_blob_monolithic, put_manifest, start_upload, with_digest)

pytestmark = pytest.mark.skipif(SERVER_KIND == "distribution",
                                reason="Berth's error mapping (507), JSON log spans and on-disk layout")

KiB = 1024
MiB = 1024 * KiB
DISK_SIZE = "24m"
# What may stay allocated after a failed request: SQLite WAL/shm pages, directory blocks.
SLACK = 256 * KiB
TIMEOUT = 20  # seconds; a request on a full disk must answer, not hang


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def small_disk():
    """A 24 MiB tmpfs, unmounted at teardown (after the server on it has stopped)."""
    d = tempfile.mkdtemp(prefix="berth-full-", dir="/tmp")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", d],
                       capture_output=True, text=True)
    if p.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs for the disk-full tests (needs root / CAP_SYS_ADMIN): "
                    f"{p.stderr.strip()}")
    yield d
    if subprocess.run(["umount", d], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", d], capture_output=True)
    os.rmdir(d)


@pytest.fixture
def server(request, small_disk, workdir):
    """Berth with its whole root (blobs, spools, metadata.db + WAL) on the small disk and
    JSON logs; the log itself lives in workdir, off the disk that fills up."""
    from conftest import _attach_log  # the per-test log attachment of conftest.py
    srv = RegistryServer("berth", workdir, root=os.path.join(small_disk, "root"))
    srv.extra_env = {"REGISTRY_LOG_FORMATTER": "json"}
    _attach_log(request.node, "berth (root on a 24 MiB tmpfs)", srv.log_text)
    srv.start()
    yield srv
    srv.stop()


# ---------------------------------------------------------------- helpers

def used_bytes(path: str) -> int:
    s = os.statvfs(path)
    return (s.f_blocks - s.f_bfree) * s.f_frsize


def free_bytes(path: str) -> int:
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize


def blob_file(srv: RegistryServer, digest: str) -> str:
    hexd = digest.split(":", 1)[1]
    return os.path.join(srv.root, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


def files_under(path: str) -> str:
    out = []
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            out.append(f"{os.path.getsize(p):>10} {os.path.relpath(p, path)}")
    return "\n".join(out)


def call(method: str, url: str, **kw) -> requests.Response:
    """A request that must get an HTTP answer in time: a hang or a dropped connection is a
    failure of its own, reported as such."""
    try:
        return requests.request(method, url, timeout=TIMEOUT, **kw)
    except requests.Timeout as e:
        pytest.fail(f"{method} {url} hung: no answer within {TIMEOUT}s ({e})")
    except requests.ConnectionError as e:
        pytest.fail(f"{method} {url}: connection error instead of an HTTP answer ({e})")


def describe(r: requests.Response) -> str:
    return f"{r.request.method} {r.url} -> {r.status_code} {dict(r.headers)} {r.text[:500]!r}"


def assert_insufficient_storage(r: requests.Response):
    assert r.status_code == 507, "expected 507 Insufficient Storage: " + describe(r)
    assert r.headers.get("Content-Type", "").startswith("application/json"), describe(r)
    errors = r.json()["errors"]
    assert len(errors) == 1 and errors[0]["code"] == "UNKNOWN", describe(r)
    assert errors[0]["message"].startswith("insufficient storage: "), describe(r)


def assert_blob_unknown(srv: RegistryServer, repo: str, digest: str):
    r = call("GET", f"{srv.url}/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404, "a failed push must leave nothing visible: " + describe(r)
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN", describe(r)
    h = call("HEAD", f"{srv.url}/v2/{repo}/blobs/{digest}")
    assert h.status_code == 404, describe(h)
    assert not os.path.exists(blob_file(srv, digest)), "half-written blob published on disk"


def patch(url: str, chunk: bytes, offset: int, **headers) -> requests.Response:
    return call("PATCH", url, data=chunk, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{offset}-{offset + len(chunk) - 1}", **headers})


class Pushed:
    """Everything acknowledged so far, to be read back bit-identical at any time."""

    def __init__(self):
        self.blobs: dict[tuple[str, str], bytes] = {}     # (repo, digest) -> bytes
        self.manifests: list[tuple[str, str, str, bytes]] = []  # repo, tag, digest, body

    def image(self, srv: RegistryServer, repo: str, tag: str, layer_size: int,
              chunked: bool = False) -> str:
        layer = os.urandom(layer_size)
        d_layer = (push_blob_chunked(srv.url, repo, layer, 256 * KiB) if chunked
                   else push_blob_monolithic(srv.url, repo, layer))
        cfg = it.canonical_json({"architecture": "amd64", "os": "linux", "tag": tag,
                                 "rootfs": {"type": "layers", "diff_ids": []}})
        d_cfg = push_blob_monolithic(srv.url, repo, cfg)
        self.blobs[(repo, d_layer)] = layer
        self.blobs[(repo, d_cfg)] = cfg
        body = manifest_for(cfg, [layer])
        digest = put_manifest(srv.url, repo, tag, body, it.OCI_MANIFEST)
        assert digest == _sha(body)
        self.manifests.append((repo, tag, digest, body))
        return digest

    def check(self, srv: RegistryServer, when: str):
        for (repo, digest), data in self.blobs.items():
            r = get_blob(srv.url, repo, digest)
            assert r.status_code == 200, f"{when}: acknowledged blob lost: {describe(r)}"
            assert r.content == data, f"{when}: blob {repo}@{digest} reads back different bytes"
        for repo, tag, digest, body in self.manifests:
            for ref in (tag, digest):
                r = get_manifest(srv.url, repo, ref)
                assert r.status_code == 200, f"{when}: acknowledged manifest lost: {describe(r)}"
                assert r.content == body, f"{when}: manifest {repo}:{ref} reads back different bytes"
                assert r.headers["Docker-Content-Digest"] == digest


def manifest_for(cfg: bytes, layers: list[bytes], pad: int = 0) -> bytes:
    m = {"schemaVersion": 2, "mediaType": it.OCI_MANIFEST,
         "config": {"mediaType": it.OCI_CONFIG, "digest": _sha(cfg), "size": len(cfg)},
         "layers": [{"mediaType": "application/octet-stream", "digest": _sha(l), "size": len(l)}
                    for l in layers]}
    if pad:
        m["annotations"] = {"org.example.padding": "x" * pad}
    return it.canonical_json(m)


def log_records(srv: RegistryServer) -> list[dict]:
    with open(srv.log_path, "rb") as f:
        text = f.read().decode(errors="replace")
    return [json.loads(l) for l in text.splitlines() if l.startswith("{")]


def _ts(rec: dict) -> datetime:
    return datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))


def access_line(records: list[dict], request_id: str) -> dict:
    lines = [r for r in records if r.get("target") == "berth::access" and r.get("request_id") == request_id]
    assert len(lines) == 1, f"expected one access line for request {request_id!r}, got {lines}"
    return lines[0]


def lines_while_serving(records: list[dict], access: dict) -> list[dict]:
    """Every non-access line whose timestamp falls inside the request's [start, end]
    (from the access line's timestamp and duration). The tests send requests one at a
    time, so these are exactly the lines logged while serving it."""
    end = _ts(access).timestamp()
    start = end - access["micros"] / 1e6
    return [r for r in records if r.get("target") != "berth::access"
            and start - 50e-6 <= _ts(r).timestamp() <= end]


def assert_lines_carry_request_id(records: list[dict], request_id: str, expect_level: str,
                                  expect_message: str) -> list[dict]:
    access = access_line(records, request_id)
    during = lines_while_serving(records, access)
    assert during, f"nothing was logged while serving {request_id!r} (access line {access})"
    for rec in during:
        assert rec.get("span", {}).get("name") == "request" and \
            rec["span"].get("request_id") == request_id, \
            f"line logged while serving request {request_id!r} lacks its request id: {rec}"
    tagged = [r for r in records if r.get("span", {}).get("request_id") == request_id]
    assert any(r["level"] == expect_level and expect_message in r["message"] for r in tagged), \
        f"no {expect_level} {expect_message!r} line for request {request_id!r}: {tagged}"
    return tagged


def assert_no_500(srv: RegistryServer):
    bad = [r for r in log_records(srv) if r.get("target") == "berth::access" and r["status"] >= 500
           and r["status"] != 507]
    assert not bad, f"requests answered 5xx other than 507: {bad}"


# ---------------------------------------------------------------- disk full mid-push

def next_url(srv: RegistryServer, r: requests.Response) -> str:
    loc = r.headers["Location"]
    return loc if "://" in loc else srv.url + loc


def test_disk_full_mid_push_answers_507_and_keeps_the_store_intact(server, small_disk):
    srv, repo = server, "ops/app"
    pushed = Pushed()
    pushed.image(srv, repo, "v1", 256 * KiB)
    pushed.image(srv, repo, "v2", 1 * MiB, chunked=True)
    pushed.image(srv, "ops/other", "latest", 512 * KiB)
    pushed.check(srv, "before the disk fills")

    # ---- monolithic POST ?digest= of a blob larger than the free space
    before = used_bytes(small_disk)
    big = os.urandom(free_bytes(small_disk) + 4 * MiB)
    r = call("POST", f"{srv.url}/v2/{repo}/blobs/uploads/?digest={_sha(big)}", data=big,
             headers={"Content-Type": "application/octet-stream", "X-Request-Id": "test-123"})
    assert_insufficient_storage(r)
    assert r.headers.get("X-Request-Id") == "test-123", describe(r)
    after = used_bytes(small_disk)
    assert after - before <= SLACK, (
        f"the failed monolithic push left {after - before} bytes allocated (used {before} -> "
        f"{after}); files on the disk:\n{files_under(small_disk)}")
    assert call("GET", srv.url + "/v2/").status_code == 200
    assert_blob_unknown(srv, repo, _sha(big))
    pushed.check(srv, "after the failed monolithic push")
    pushed.image(srv, repo, "after-monolithic", 2 * MiB)  # the space is usable again at once

    # ---- chunked: one chunk fits, the next is larger than the free space
    before = used_bytes(small_disk)
    url = start_upload(srv.url, repo)
    first = os.urandom(2 * MiB)
    r = patch(url, first, 0)
    assert r.status_code == 202, describe(r)
    url = next_url(srv, r)
    too_big = os.urandom(free_bytes(small_disk) + 4 * MiB)
    r = patch(url, too_big, len(first))
    assert_insufficient_storage(r)
    assert_blob_unknown(srv, repo, _sha(first + too_big))
    # The session is exactly as before the failed chunk: its acknowledged bytes, no more...
    st = call("GET", url)
    assert st.status_code == 204 and st.headers.get("Range") == f"0-{len(first) - 1}", describe(st)
    held = used_bytes(small_disk) - before
    assert held <= len(first) + SLACK, (
        f"after the failed PATCH the disk holds {held} bytes for a session of {len(first)}; "
        f"files:\n{files_under(small_disk)}")
    assert call("GET", srv.url + "/v2/").status_code == 200
    pushed.check(srv, "after the failed PATCH")
    # ... and the client can go on with it once there is room.
    rest = os.urandom(MiB)
    r = patch(url, rest, len(first))
    assert r.status_code == 202, describe(r)
    r = call("PUT", with_digest(next_url(srv, r), _sha(first + rest)))
    assert r.status_code == 201, describe(r)
    pushed.blobs[(repo, _sha(first + rest))] = first + rest
    pushed.image(srv, repo, "after-chunked", 3 * MiB, chunked=True)
    pushed.check(srv, "after the disk-full episode")
    assert_no_500(srv)

    # ---- and all of it survives a restart on the same root
    srv.stop()
    srv.start()
    assert call("GET", srv.url + "/v2/").status_code == 200
    pushed.check(srv, "after a restart")
    assert_blob_unknown(srv, repo, _sha(big))
    assert_blob_unknown(srv, repo, _sha(first + too_big))
    pushed.image(srv, repo, "after-restart", 1 * MiB)
    pushed.check(srv, "after a restart and another push")
    assert_no_500(srv)


def fill_disk(srv: RegistryServer, disk: str, url: str, offset: int,
              down_to: int = 0) -> tuple[str, int]:
    """Appends chunks of shrinking sizes to an upload session until the disk has at most
    `down_to` bytes free, or, with down_to=0, until even a 4 KiB chunk answers 507 (every
    failure must be a 507). Returns the session URL and its offset."""
    for size in (4 * MiB, MiB, 256 * KiB, 64 * KiB, 16 * KiB, 4 * KiB):
        for _ in range(64):
            if down_to and free_bytes(disk) <= down_to:
                return url, offset
            r = patch(url, os.urandom(size), offset)
            if r.status_code != 202:
                assert_insufficient_storage(r)
                break
            offset += size
            url = next_url(srv, r)
    return url, offset


def test_failed_manifest_push_on_a_full_disk_leaves_nothing_behind(server, small_disk):
    srv, repo = server, "ops/manifest"
    pushed = Pushed()
    pushed.image(srv, repo, "v1", 256 * KiB)
    url, _ = fill_disk(srv, small_disk, start_upload(srv.url, repo), 0, down_to=2 * MiB)
    free = free_bytes(small_disk)
    assert 256 * KiB < free <= 2 * MiB, free
    layer = next(b for b in pushed.blobs.values() if len(b) == 256 * KiB)
    cfg = next(b for b in pushed.blobs.values() if b is not layer)
    fat = manifest_for(cfg, [layer], pad=free + 512 * KiB)  # under the 4 MiB manifest limit
    r = call("PUT", f"{srv.url}/v2/{repo}/manifests/too-big", data=fat,
             headers={"Content-Type": it.OCI_MANIFEST})
    assert_insufficient_storage(r)
    left = free_bytes(small_disk)
    # FAILS on Berth at the time of writing: the manifest's staged file in berth/uploads/
    # stays behind with what was written before ENOSPC (FsBlobStore::put_bytes).
    assert left >= free - 64 * KiB, (
        f"the failed manifest PUT kept {free - left} bytes of the {free} that were free "
        f"(a half-written staged file?); files on the disk:\n{files_under(small_disk)}")
    for ref in ("too-big", _sha(fat)):
        g = get_manifest(srv.url, repo, ref)
        assert g.status_code == 404, describe(g)
    pushed.check(srv, "after the failed manifest push")
    # A manifest that fits still goes in.
    small = manifest_for(cfg, [layer], pad=1000)
    assert put_manifest(srv.url, repo, "fits", small, it.OCI_MANIFEST) == _sha(small)
    assert call("DELETE", url).status_code == 204
    assert_no_500(srv)


def test_cancelling_the_upload_that_filled_the_disk_frees_it(server, small_disk):
    """An upload filled the disk to the last page (each further chunk answered 507). The
    operator's way out is to cancel it: DELETE must answer 204 and free its space, and
    the registry must take pushes again, also after a restart."""
    srv, repo = server, "ops/brim"
    pushed = Pushed()
    pushed.image(srv, repo, "v1", 256 * KiB)
    before = used_bytes(small_disk)
    url, offset = fill_disk(srv, small_disk, start_upload(srv.url, repo), 0)
    assert free_bytes(small_disk) < 4 * KiB, free_bytes(small_disk)
    st = call("GET", url)
    assert st.status_code == 204 and st.headers.get("Range") == f"0-{offset - 1}", describe(st)
    assert call("GET", srv.url + "/v2/").status_code == 200
    pushed.check(srv, "with the disk full")

    r = call("DELETE", url)
    # FAILS on Berth at the time of writing: 507, because the session's row is deleted
    # (a SQLite write, SQLITE_FULL) before its spool, so the space never comes back.
    assert r.status_code == 204, (
        "cancelling the upload that filled the disk must free it, but: " + describe(r) +
        f"\nfree bytes: {free_bytes(small_disk)}; files:\n{files_under(small_disk)}")
    assert used_bytes(small_disk) - before <= SLACK, files_under(small_disk)
    st = call("GET", url)
    assert st.status_code == 404 and st.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", describe(st)
    pushed.image(srv, repo, "after", 2 * MiB, chunked=True)
    pushed.check(srv, "after cancelling")
    assert_no_500(srv)

    srv.stop()
    srv.start()
    pushed.check(srv, "after a restart")
    st = call("GET", url.replace(url.split("/v2/")[0], srv.url))
    assert st.status_code == 404, "the cancelled session came back after a restart: " + describe(st)
    assert_no_500(srv)


def test_metadata_database_full_answers_507_and_loses_nothing(server, small_disk):
    """SQLite (metadata.db + WAL) on the full disk: metadata-only writes (cross-repository
    mounts) must answer 201 and be durable, or 507 and change nothing."""
    srv = server
    pushed = Pushed()
    pushed.image(srv, "meta/src", "v1", 512 * KiB)
    layer_digest = next(d for (_, d), b in pushed.blobs.items() if len(b) == 512 * KiB)
    url, _ = fill_disk(srv, small_disk, start_upload(srv.url, "meta/filler"), 0)
    assert free_bytes(small_disk) < 4 * KiB, free_bytes(small_disk)

    answers: dict[int, list[str]] = {}
    mounted = []
    for i in range(300):
        target = f"meta/mount{i}"
        r = call("POST", f"{srv.url}/v2/{target}/blobs/uploads/?mount={layer_digest}&from=meta/src")
        answers.setdefault(r.status_code, []).append(target)
        if r.status_code == 201:
            mounted.append(target)
        else:
            assert_insufficient_storage(r)
        if len(answers.get(507, [])) >= 2 and len(mounted) >= 3:
            break
    assert 507 in answers, ("SQLite never hit the full disk; cannot test the metadata path "
                            f"(answers {({k: len(v) for k, v in answers.items()})})")
    summary = {k: (len(v), v[:3]) for k, v in answers.items()}

    # A mount acknowledged with 201 after SQLITE_FULL must be readable. FAILS on Berth at
    # the time of writing: after a failed commit the write connection stays inside a
    # transaction that never commits (sqlx's depth count no longer matches SQLite's), so
    # every later write is acknowledged, invisible to readers and lost on restart.
    unreadable = [t for t in mounted
                  if call("HEAD", f"{srv.url}/v2/{t}/blobs/{layer_digest}").status_code != 200]
    assert not unreadable, (
        f"mounts answered 201 on a full metadata disk but are not readable: {unreadable[:5]} "
        f"(of {len(unreadable)}); answers in order of status: {summary}")

    # Free the disk by cancelling the filling upload; the registry must be fully usable.
    r = call("DELETE", url)
    assert r.status_code == 204, describe(r)
    st = call("GET", url)
    assert st.status_code == 404, describe(st)
    pushed.image(srv, "meta/src", "after", 256 * KiB)
    pushed.check(srv, "after SQLite hit the full disk")
    assert_no_500(srv)

    srv.stop()
    srv.start()
    pushed.check(srv, "after a restart")
    lost = [t for t in mounted
            if call("HEAD", f"{srv.url}/v2/{t}/blobs/{layer_digest}").status_code != 200]
    assert not lost, f"acknowledged mounts lost after a restart: {lost[:5]} (of {len(lost)})"
    st = call("GET", url.replace(url.split("/v2/")[0], srv.url))
    assert st.status_code == 404, "the cancelled session came back after a restart: " + describe(st)


# ---------------------------------------------------------------- request ids in the log

def test_every_log_line_of_a_request_carries_its_request_id(server, small_disk):
    srv, repo = server, "logs/app"
    # 1. disk full: a warning "blob store failed" while serving the request
    big = os.urandom(free_bytes(small_disk) + 4 * MiB)
    r = call("POST", f"{srv.url}/v2/{repo}/blobs/uploads/?digest={_sha(big)}", data=big,
             headers={"Content-Type": "application/octet-stream", "X-Request-Id": "test-123"})
    assert_insufficient_storage(r)
    assert r.headers.get("X-Request-Id") == "test-123"
    # 2. blob data lost underneath: an error while serving the GET
    data = os.urandom(64 * KiB)
    digest = push_blob_monolithic(srv.url, repo, data)
    os.remove(blob_file(srv, digest))
    r = call("GET", f"{srv.url}/v2/{repo}/blobs/{digest}", headers={"X-Request-Id": "test-456"})
    assert r.status_code == 404 and r.headers.get("X-Request-Id") == "test-456", describe(r)
    # 3. no X-Request-Id sent: the generated one is answered and used in the log
    r = call("GET", f"{srv.url}/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404, describe(r)
    generated = r.headers.get("X-Request-Id")
    assert generated, describe(r)
    srv.stop()  # flushes the log

    records = log_records(srv)
    full = assert_lines_carry_request_id(records, "test-123", "WARN", "blob store failed")
    assert any("No space left on device" in rec.get("error", "") for rec in full), full
    assert access_line(records, "test-123")["status"] == 507
    lost = assert_lines_carry_request_id(records, "test-456", "ERROR",
                                         "blob is recorded in metadata but missing from storage")
    assert any(rec.get("digest") == digest for rec in lost), lost
    assert access_line(records, "test-456")["status"] == 404
    assert_lines_carry_request_id(records, generated, "ERROR",
                                  "blob is recorded in metadata but missing from storage")
    # The same for every request of the test (one at a time, so the windows are apart).
    accesses = [r for r in records if r.get("target") == "berth::access"]
    for access in accesses:
        for rec in lines_while_serving(records, access):
            assert rec.get("span", {}).get("request_id") == access["request_id"], (access, rec)
    # No line inside a request span names a request that does not exist.
    ids = {r["request_id"] for r in accesses}
    strays = [r for r in records if "span" in r and r["span"].get("request_id") not in ids]
    assert not strays, strays


# ---------------------------------------------------------------- storage errors vs bugs

def test_lost_blob_data_is_404_not_500_and_the_rest_still_serves(server):
    """Data lost underneath Berth (a blob file deleted behind its back) is the store's
    problem, not a bug in the request: 404 BLOB_UNKNOWN (the client can push it again),
    never 500; other blobs and manifests keep serving, and a re-push heals it."""
    srv, repo = server, "lost/app"
    pushed = Pushed()
    pushed.image(srv, repo, "v1", 128 * KiB)
    victim = os.urandom(96 * KiB)
    digest = push_blob_monolithic(srv.url, repo, victim)
    os.remove(blob_file(srv, digest))

    r = call("GET", f"{srv.url}/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404, "lost blob data must be 404, not " + describe(r)
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN", describe(r)
    r = call("GET", f"{srv.url}/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=0-99"})
    assert r.status_code == 404, "ranged GET of lost blob data: " + describe(r)
    pushed.check(srv, "with another blob's data lost")
    assert call("GET", srv.url + "/v2/").status_code == 200

    assert push_blob_monolithic(srv.url, repo, victim) == digest
    assert get_blob(srv.url, repo, digest).content == victim, "a re-push must heal the lost blob"
    assert_no_500(srv)
