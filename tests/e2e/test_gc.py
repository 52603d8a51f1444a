"""Garbage collection from the outside: the `berth gc` and `berth garbage-collect` commands on a
registry filled by skopeo, and online collection in a cluster (three instances on S3 +
PostgreSQL behind haproxy) while pushers push, a deleter deletes and an instance is killed
with SIGKILL: every acknowledged push that was not deleted pulls back whole, and afterwards
the objects in the bucket are exactly the blobs the database records, with the deleted
images' bytes gone."""
import hashlib
import os
import re
import shutil
import subprocess
import uuid

import pytest
import requests

import imagetools as it
from e2eutil import BERTH_BIN, Cluster, berth_only, fresh_postgres_database, push_blob_monolithic, run, wait_for
from pushing import check_acknowledged_intact, run_pushers
from test_object_storage import keys_under, s3_endpoint, s3_env  # noqa: F401 (a fixture)

pytestmark = berth_only


def gc(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `berth ARGS`; its output as text."""
    p = run([BERTH_BIN, *args], env=env, check=check, timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


def test_gc_commands_free_what_nothing_references(make_server, skopeo, workdir):
    srv = make_server()
    image = it.write_image_layout(os.path.join(workdir, "img"), "v1", salt="gc-cli")
    ref = f"docker://{srv.host}/gc/app:v1"
    skopeo.copy(image.ref, ref, "--preserve-digests")
    loose = push_blob_monolithic(srv.url, "gc/app", b"a layer whose manifest never came")
    loose_path = os.path.join(srv.root, "docker/registry/v2/blobs/sha256", loose[7:9], loose[7:], "data")
    assert os.path.exists(loose_path)

    env = {**srv.env(), "REGISTRY_BERTH_GC_GRACE": "0s"}
    busy = gc(env, "gc", check=False)
    assert busy.returncode != 0 and "in use by another process" in busy.stderr, busy.stderr
    srv.stop()

    dry = gc(env, "gc", "--dry-run").stdout
    assert f"{loose}\t" in dry and "would free 1 blobs" in dry, dry
    config = os.path.join(workdir, "config.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {srv.root}\n")
    compat = gc(env, "garbage-collect", "--dry-run", config).stdout
    assert f"{loose}\t" in compat and "would free 1 blobs" in compat, compat
    assert os.path.exists(loose_path), "a dry run deletes nothing"

    done = gc(env, "gc").stdout
    assert "freed 1 blobs" in done, done
    assert not os.path.exists(loose_path)
    assert "freed 0 blobs" in gc(env, "garbage-collect", config).stdout

    srv.start()
    out = os.path.join(workdir, "pulled")
    skopeo.copy(ref, f"oci:{out}:x", "--preserve-digests")
    top, blobs = it.read_layout(out)
    assert top == image.digest
    assert it.referenced_digests(blobs, top) == image.all_blob_digests()


def _blob_keys(endpoint: str, prefix: str) -> set[str]:
    found = set()
    for key in keys_under(endpoint, prefix + "/docker/registry/v2/blobs"):
        m = re.search(r"blobs/(sha256|sha512)/[0-9a-f]{2}/([0-9a-f]+)/data$", key)
        if m:
            found.add(f"{m.group(1)}:{m.group(2)}")
    return found


@pytest.mark.skipif(not os.environ.get("BERTH_TEST_POSTGRES") or not shutil.which("haproxy"),
                    reason="needs PostgreSQL (BERTH_TEST_POSTGRES) and haproxy")
def test_collection_in_a_cluster_under_load_loses_no_acknowledged_push(workdir, s3_endpoint):  # noqa: F811
    database = fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"])
    prefix = "/gc-" + uuid.uuid4().hex[:12]
    env = {"REGISTRY_BERTH_DATABASE_URL": database, **s3_env(s3_endpoint, prefix, redirect=False),
           "REGISTRY_BERTH_GC_INTERVAL": "200ms", "REGISTRY_BERTH_GC_GRACE": "1s",
           "REGISTRY_BERTH_GC_STORAGESCAN": "1s"}
    cluster = Cluster(workdir, env)
    deleted: list[dict] = []
    try:
        victim = cluster.instances[2]

        def delete_and_kill(_pushers, acked):
            """Deletes the oldest acknowledged images by digest; kills an instance half-way."""
            while len(deleted) < 30:
                wait_for(lambda: len(acked) >= 2, 120, "pushes to delete")
                image = acked.pop(0)
                digest = "sha256:" + hashlib.sha256(image["manifest"]).hexdigest()
                r = requests.delete(f"{cluster.url}/v2/{image['repo']}/manifests/{digest}", timeout=30)
                assert r.status_code == 202, r.text
                deleted.append(image)
                if len(deleted) == 15:
                    victim.kill9()
            victim.start()

        pushers, acked = run_pushers(cluster.url, 4, delete_and_kill)
        check_acknowledged_intact([s.url for s in cluster.instances], acked)
        print(f"{len(acked)} pushes kept, {len(deleted)} deleted, "
              f"{sum(p.failures for p in pushers)} attempts failed and were redone")
    finally:
        cluster.stop()

    # Drain: one pass with no grace, storage scan included, beside nothing else.
    # The instance killed mid-push may have left a hold: with nothing running, none is live.
    cli_env = {**os.environ, **env, "REGISTRY_BERTH_GC_GRACE": "0s", "REGISTRY_BERTH_GC_HOLDLEASE": "0s",
               "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": os.path.join(workdir, "cli-root")}
    gc(cli_env, "gc", "--scan-storage")
    assert "would free 0 blobs" in gc(cli_env, "gc", "--dry-run", "--scan-storage").stdout
    rows = set(run(["psql", database, "-AtXc", "SELECT digest FROM blobs"]).stdout.decode().split())
    objects = _blob_keys(s3_endpoint, prefix)
    assert objects == rows, f"in the bucket only: {objects - rows}; recorded only: {rows - objects}"
    for image in deleted:
        for digest in image["blobs"]:
            assert digest not in objects, f"{digest} of a deleted image is still stored"
    for image in acked:
        for digest in image["blobs"]:
            assert digest in objects, f"{digest} of a kept image is gone"
