"""Pushers that keep pushing images while something goes wrong underneath (an instance killed,
an object store failing, the database restarted), and the check that follows: every push that
was acknowledged pulls back bit-identical, and nothing a failed push left is half there."""
from __future__ import annotations

import hashlib
import json
import random
import threading

import requests

from e2eutil import path_of, with_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class PushFailed(Exception):
    """A push answered with something other than success; `status` is the answer's."""

    def __init__(self, what: str, response: requests.Response):
        super().__init__(f"{what}: {response.status_code} {response.text[:200]}")
        self.status = response.status_code
        self.retry_after = response.headers.get("Retry-After")
        try:
            self.codes = [e["code"] for e in response.json()["errors"]]
        except (ValueError, KeyError, TypeError):
            self.codes = []


class Pusher(threading.Thread):
    """Pushes images (a layer in two chunks, a config, a manifest, a tag) to `base` until told
    to stop; a push that fails anywhere is started again from scratch with new content, as a CI
    job's retry does. Pushes answered 201 to the end go to `acked`; every blob ever sent goes to
    `attempted`, and every refusal to `refusals`."""

    def __init__(self, base: str, n: int, acked: list, lock: threading.Lock, stop: threading.Event):
        super().__init__(daemon=True)
        self.base, self.n, self.acked, self.lock, self.stop = base, n, acked, lock, stop
        self.rng = random.Random(n)
        self.attempted: dict[str, bytes] = {}
        self.refusals: list[PushFailed] = []
        self.broken_connections = 0

    @property
    def failures(self) -> int:
        return len(self.refusals) + self.broken_connections

    def run(self):
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            try:
                image = self.push(f"team/p{self.n}", f"t{attempt}")
            except PushFailed as e:
                self.refusals.append(e)
                continue
            except requests.RequestException:
                self.broken_connections += 1
                continue
            with self.lock:
                self.acked.append(image)

    def expect(self, r: requests.Response, status: int, what: str) -> requests.Response:
        if r.status_code != status:
            raise PushFailed(what, r)
        return r

    def upload(self, repo: str, data: bytes, chunk: int) -> str:
        self.attempted[sha256(data)] = data
        r = self.expect(requests.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=30), 202, "POST")
        location = path_of(r.headers["Location"])
        for off in range(0, len(data) - chunk, chunk):
            r = self.expect(requests.patch(self.base + location, data=data[off:off + chunk], timeout=60, headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{off}-{off + chunk - 1}"}), 202, "PATCH")
            location = path_of(r.headers["Location"])
        done = (len(data) - 1) // chunk * chunk
        self.expect(requests.put(with_digest(self.base + location, sha256(data)), data=data[done:], timeout=60,
                                 headers={"Content-Type": "application/octet-stream"}), 201, "PUT")
        return sha256(data)

    def push(self, repo: str, tag: str) -> dict:
        layer = self.rng.randbytes(self.rng.randint(64 << 10, 2 << 20))
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": self.rng.random()}).encode()
        blobs = {self.upload(repo, layer, max(len(layer) // 2, 1)): layer,
                 self.upload(repo, config, len(config)): config}
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                        "size": len(layer)}],
        }).encode()
        self.expect(requests.put(f"{self.base}/v2/{repo}/manifests/{tag}", data=manifest, timeout=60,
                                 headers={"Content-Type": OCI_MANIFEST}), 201, "PUT manifest")
        return {"repo": repo, "tag": tag, "manifest": manifest, "blobs": blobs}


def run_pushers(base: str, count: int, during) -> tuple[list[Pusher], list[dict]]:
    """Starts `count` pushers on `base`, calls `during(pushers, acked)` while they push, then
    stops them; returns them and the pushes they got acknowledged."""
    acked, lock, stop = [], threading.Lock(), threading.Event()
    pushers = [Pusher(base, n, acked, lock, stop) for n in range(count)]
    for p in pushers:
        p.start()
    try:
        during(pushers, acked)
    finally:
        stop.set()
        for p in pushers:
            p.join(timeout=120)
    return pushers, acked


def check_acknowledged_intact(urls: list[str], acked: list[dict]) -> None:
    """Every acknowledged push, through each of `urls`: its tag gives its manifest, and each of
    its blobs its exact bytes."""
    for url in urls:
        for image in acked:
            r = requests.get(f"{url}/v2/{image['repo']}/manifests/{image['tag']}", timeout=30,
                             headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == image["manifest"], (url, image["tag"], r.status_code)
            for digest, data in image["blobs"].items():
                got = requests.get(f"{url}/v2/{image['repo']}/blobs/{digest}", timeout=60)
                assert got.status_code == 200 and got.content == data, (url, digest, got.status_code)


def check_nothing_half_written(url: str, pushers: list[Pusher]) -> None:
    """A blob a failed push sent is either unknown or whole: never present with other bytes."""
    for p in pushers:
        repo = f"team/p{p.n}"
        for digest, data in p.attempted.items():
            head = requests.head(f"{url}/v2/{repo}/blobs/{digest}", timeout=30)
            assert head.status_code in (200, 404), (digest, head.status_code)
            if head.status_code == 200:
                assert int(head.headers["Content-Length"]) == len(data), digest
                got = requests.get(f"{url}/v2/{repo}/blobs/{digest}", timeout=60)
                assert got.status_code == 200 and got.content == data, digest
