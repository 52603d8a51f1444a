"""A cluster: three Berth instances on loopback that share PostgreSQL (metadata) and S3 (blobs)
and nothing else (each has a root directory of its own), behind a real haproxy balancing
round robin, request by request.

- The chunks of one upload are sent to different instances, and any instance completes it.
- The model-based concurrency test (modelcheck.py) runs through the load balancer.
- One instance is killed with SIGKILL in the middle of pushes; afterwards every push that was
  acknowledged pulls back bit-identical through every instance (the killed one restarted),
  and the pushes it interrupted were restarted by their clients.

Needs BERTH_TEST_POSTGRES (scripts/postgres.sh) and haproxy; S3 is BERTH_TEST_S3 or a server
of scripts/s3.sh."""
import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import uuid

import pytest
import requests

from e2eutil import (RegistryServer, berth_only, fresh_postgres_database, free_port, stop_process,
                     wait_for, with_digest)
from modelcheck import DEFAULT_CLIENTS, DEFAULT_OPS, DEFAULT_SEED, Features, run_model
from test_object_storage import s3_endpoint  # noqa: F401 (a fixture)

pytestmark = [
    berth_only,
    pytest.mark.skipif(not os.environ.get("BERTH_TEST_POSTGRES") or not shutil.which("haproxy"),
                       reason="needs PostgreSQL (BERTH_TEST_POSTGRES) and haproxy"),
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Cluster:
    def __init__(self, workdir: str, s3: str):
        database = fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"])
        prefix = "/cluster-" + uuid.uuid4().hex[:12]
        env = {
            "REGISTRY_BERTH_DATABASE_URL": database,
            "REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_BUCKET": "berth-test",
            "REGISTRY_STORAGE_S3_REGION": "us-east-1", "REGISTRY_STORAGE_S3_REGIONENDPOINT": s3,
            "REGISTRY_STORAGE_S3_ACCESSKEY": "test", "REGISTRY_STORAGE_S3_SECRETKEY": "test",
            "REGISTRY_STORAGE_S3_ROOTDIRECTORY": prefix, "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        }
        self.instances = []
        for i in range(3):
            d = os.path.join(workdir, f"instance{i}")
            os.makedirs(d)
            srv = RegistryServer("berth", d)
            srv.extra_env = env
            srv.start()
            self.instances.append(srv)
        self.port = free_port()
        cfg = os.path.join(workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(self.port, [s.port for s in self.instances]))
        self.log = open(os.path.join(workdir, "haproxy.log"), "wb")
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.up_through_balancer(), 30, "haproxy answering")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up_through_balancer(self) -> bool:
        try:
            return requests.get(self.url + "/v2/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        stop_process(self.haproxy)
        self.log.close()
        for srv in self.instances:
            srv.stop()


def haproxy_config(port: int, backends: list[int]) -> str:
    """Round robin per request; a dead instance is taken out by its failed health checks, and a
    request whose connection to it is refused is sent to another (`redispatch`)."""
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p} check inter 300ms fall 1 rise 1"
                        for i, p in enumerate(backends))
    return f"""global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 2
    option redispatch
frontend registry
    bind 127.0.0.1:{port}
    default_backend berth
backend berth
    balance roundrobin
    option httpchk GET /v2/
    http-check expect status 200
{servers}
"""


@pytest.fixture
def cluster(workdir, s3_endpoint):  # noqa: F811 (the fixture imported above)
    c = Cluster(workdir, s3_endpoint)
    yield c
    c.stop()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_chunks_of_one_upload_on_different_instances(cluster):
    """POST on the first instance, a chunk on each of the others, the last chunk and the
    digest on the first: no instance has seen the whole upload, and every one serves the blob.
    Chunks of 6 MiB are parts the store composes by server-side copies; a session of small
    chunks is composed by streaming."""
    a, b, c = (s.url for s in cluster.instances)
    for size in (6 << 20, 4096):
        data = random.Random(size).randbytes(3 * size + 1000)
        r = requests.post(f"{a}/v2/team/chunks/blobs/uploads/", timeout=30)
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        for i, base in enumerate((b, c)):
            chunk = data[i * size:(i + 1) * size]
            r = requests.patch(base + location, data=chunk, timeout=60, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{i * size}-{(i + 1) * size - 1}"})
            assert r.status_code == 202, r.text
            assert r.headers["Range"] == f"0-{(i + 1) * size - 1}"
            location = r.headers["Location"]
        r = requests.get(c + location, timeout=30)
        assert r.status_code == 204 and r.headers["Range"] == f"0-{2 * size - 1}", "any instance knows the offset"
        r = requests.put(with_digest(a + location, sha256(data)), data=data[2 * size:], timeout=120,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        for base in (a, b, c):
            got = requests.get(f"{base}/v2/team/chunks/blobs/{sha256(data)}", timeout=60)
            assert got.status_code == 200 and got.content == data


def test_model_through_the_load_balancer(cluster):
    seed = int(os.environ.get("MODEL_SEED", DEFAULT_SEED))
    run_model(cluster.url, seed=seed, ops=int(os.environ.get("MODEL_OPS", DEFAULT_OPS)),
              clients=int(os.environ.get("MODEL_CLIENTS", DEFAULT_CLIENTS)),
              features=Features.for_server("berth"))


class Pusher(threading.Thread):
    """Pushes images (a layer in two chunks, a config, a manifest, a tag) through the load
    balancer until told to stop; a push that fails anywhere is started again from scratch with
    new content, as a CI job's retry does. Only pushes answered 201 to the end are recorded."""

    def __init__(self, base: str, n: int, acked: list, lock: threading.Lock, stop: threading.Event):
        super().__init__(daemon=True)
        self.base, self.n, self.acked, self.lock, self.stop = base, n, acked, lock, stop
        self.rng = random.Random(n)
        self.failures = 0

    def run(self):
        attempt = 0
        while not self.stop.is_set():
            attempt += 1
            try:
                image = self.push(f"team/p{self.n}", f"t{attempt}")
            except (requests.RequestException, AssertionError):
                self.failures += 1
                continue
            with self.lock:
                self.acked.append(image)

    def upload(self, repo: str, data: bytes, chunk: int) -> str:
        r = requests.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=30)
        assert r.status_code == 202, r.status_code
        location = r.headers["Location"]
        for off in range(0, len(data) - chunk, chunk):
            r = requests.patch(self.base + location, data=data[off:off + chunk], timeout=60, headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{off}-{off + chunk - 1}"})
            assert r.status_code == 202, r.status_code
            location = r.headers["Location"]
        done = (len(data) - 1) // chunk * chunk
        r = requests.put(with_digest(self.base + location, sha256(data)), data=data[done:], timeout=60,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.status_code
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
        r = requests.put(f"{self.base}/v2/{repo}/manifests/{tag}", data=manifest, timeout=60,
                         headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, r.status_code
        return {"repo": repo, "tag": tag, "manifest": manifest, "blobs": blobs}


def test_an_instance_killed_mid_push_loses_no_acknowledged_push(cluster):
    acked, lock, stop = [], threading.Lock(), threading.Event()
    pushers = [Pusher(cluster.url, n, acked, lock, stop) for n in range(6)]
    for p in pushers:
        p.start()
    victim = cluster.instances[1]
    try:
        wait_for(lambda: len(acked) >= 6, 120, "pushes before the kill")
        victim.kill9()
        at_kill = len(acked)
        wait_for(lambda: len(acked) >= at_kill + 12, 120, "pushes after the kill")
    finally:
        stop.set()
        for p in pushers:
            p.join(timeout=120)
    victim.start()
    for image in acked:
        for srv in cluster.instances:
            r = requests.get(f"{srv.url}/v2/{image['repo']}/manifests/{image['tag']}", timeout=30,
                             headers={"Accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == image["manifest"], (srv.url, image["tag"], r.status_code)
            for digest, data in image["blobs"].items():
                got = requests.get(f"{srv.url}/v2/{image['repo']}/blobs/{digest}", timeout=60)
                assert got.status_code == 200 and got.content == data, (srv.url, digest)
    print(f"{len(acked)} pushes acknowledged, {sum(p.failures for p in pushers)} attempts failed and were redone")
