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
import os
import random
import shutil
import uuid

import pytest
import requests

from e2eutil import Cluster, berth_only, fresh_postgres_database, path_of, wait_for, with_digest
from modelcheck import DEFAULT_CLIENTS, DEFAULT_OPS, DEFAULT_SEED, Features, run_model
from pushing import check_acknowledged_intact, check_nothing_half_written, run_pushers, sha256
from test_object_storage import s3_endpoint, s3_env  # noqa: F401 (a fixture)

pytestmark = [
    berth_only,
    pytest.mark.skipif(not os.environ.get("BERTH_TEST_POSTGRES") or not shutil.which("haproxy"),
                       reason="needs PostgreSQL (BERTH_TEST_POSTGRES) and haproxy"),
]


@pytest.fixture
def cluster(workdir, s3_endpoint):  # noqa: F811 (the fixture imported above)
    database = fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"])
    prefix = "/cluster-" + uuid.uuid4().hex[:12]
    c = Cluster(workdir, {"REGISTRY_BERTH_DATABASE_URL": database, **s3_env(s3_endpoint, prefix, redirect=False)})
    yield c
    c.stop()


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
        location = path_of(r.headers["Location"])
        for i, base in enumerate((b, c)):
            chunk = data[i * size:(i + 1) * size]
            r = requests.patch(base + location, data=chunk, timeout=60, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{i * size}-{(i + 1) * size - 1}"})
            assert r.status_code == 202, r.text
            assert r.headers["Range"] == f"0-{(i + 1) * size - 1}"
            location = path_of(r.headers["Location"])
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


def test_an_instance_killed_mid_push_loses_no_acknowledged_push(cluster):
    victim = cluster.instances[1]

    def kill_one(_pushers, acked):
        wait_for(lambda: len(acked) >= 6, 120, "pushes before the kill")
        victim.kill9()
        at_kill = len(acked)
        wait_for(lambda: len(acked) >= at_kill + 12, 120, "pushes after the kill")

    pushers, acked = run_pushers(cluster.url, 6, kill_one)
    victim.start()
    check_acknowledged_intact([s.url for s in cluster.instances], acked)
    check_nothing_half_written(cluster.url, pushers)
    print(f"{len(acked)} pushes acknowledged, {sum(p.failures for p in pushers)} attempts failed and were redone")
