"""Faults under pushes, on blobs in S3 and metadata in PostgreSQL:

- the object store fails: a proxy between Berth and the S3 server adds latency, refuses
  requests with 503 `SlowDown` and loses the answers of requests the store carried out
  (500 after the fact), in a storm between calm phases;
- PostgreSQL is stopped in the middle of pushes and started again.

Clients get the spec's 503 `UNAVAILABLE` with `Retry-After` (never a 500), or succeed;
afterwards every push that was acknowledged pulls back bit-identical, and every blob a failed
push sent is either unknown or whole. Needs BERTH_TEST_POSTGRES (scripts/postgres.sh); S3 is
BERTH_TEST_S3 or a server of scripts/s3.sh."""
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from e2eutil import REPO_ROOT, RegistryServer, berth_only, free_port, fresh_postgres_database, wait_for
from faultproxy import FaultProxy
from pushing import check_acknowledged_intact, check_nothing_half_written, run_pushers
from test_object_storage import s3_endpoint, s3_env  # noqa: F401 (a fixture)

pytestmark = [
    berth_only,
    pytest.mark.skipif(not os.environ.get("BERTH_TEST_POSTGRES"), reason="needs PostgreSQL (BERTH_TEST_POSTGRES)"),
]

SEED = int(os.environ.get("FAULT_SEED", "8"))


def berth_on(workdir: str, s3: str, database: str) -> RegistryServer:
    srv = RegistryServer("berth", workdir)
    srv.extra_env = {"REGISTRY_BERTH_DATABASE_URL": database,
                     **s3_env(s3, "/faults-" + uuid.uuid4().hex[:12], redirect=False)}
    srv.start()
    return srv


def refusals(pushers) -> list:
    return [r for p in pushers for r in p.refusals]


def assert_only_unavailable(pushers) -> None:
    """Every push that failed was told to come back later, in the spec's words."""
    for r in refusals(pushers):
        assert (r.status, r.codes) == (503, ["UNAVAILABLE"]) and r.retry_after, r
    assert not any(p.broken_connections for p in pushers), "Berth stayed up: no connection broke"


def test_object_store_errors_and_latency(workdir, s3_endpoint):  # noqa: F811 (the fixture imported above)
    print(f"fault seed {SEED} (FAULT_SEED replays)")
    with FaultProxy(s3_endpoint, SEED) as proxy:
        srv = berth_on(workdir, proxy.url, fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"]))
        try:
            def storm(pushers, acked):
                wait_for(lambda: len(acked) >= 3, 120, "pushes in calm")
                proxy.faults.set(refuse=0.5, lose_answer=0.15, max_delay=0.05)
                wait_for(lambda: len(refusals(pushers)) >= 3, 180, "pushes refused in the storm")
                proxy.faults.set()
                at_calm = len(acked)
                wait_for(lambda: len(acked) >= at_calm + 3, 120, "pushes after the storm")

            pushers, acked = run_pushers(srv.url, 4, storm)
            counts = dict(proxy.faults.counts)
            assert counts["refused"] > 0 and counts["answer_lost"] > 0, counts
            assert_only_unavailable(pushers)
            check_acknowledged_intact([srv.url], acked)
            check_nothing_half_written(srv.url, pushers)
            print(f"{len(acked)} pushes acknowledged, {len(refusals(pushers))} refused; store requests: {counts}")
        finally:
            srv.stop()


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of our own, which the test stops and starts again."""
    d = tempfile.mkdtemp(prefix="berth-pg-")
    os.chmod(d, 0o755)
    script = os.path.join(REPO_ROOT, "scripts", "postgres.sh")
    port = str(free_port())

    def start() -> str:
        p = subprocess.run([script, "start", d, port], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().splitlines()[-1]

    def stop() -> None:
        subprocess.run([script, "stop", d], check=True, capture_output=True, timeout=120)

    yield start, stop
    subprocess.run([script, "stop", d], capture_output=True, timeout=120)
    shutil.rmtree(d, ignore_errors=True)


def test_postgres_restarted_mid_push(workdir, s3_endpoint, own_postgres):  # noqa: F811
    start, stop = own_postgres
    srv = berth_on(workdir, s3_endpoint, start())
    try:
        def restart(pushers, acked):
            wait_for(lambda: len(acked) >= 3, 120, "pushes before the restart")
            stop()
            wait_for(lambda: len(refusals(pushers)) >= 3, 120, "pushes refused while the database is down")
            start()
            at_start = len(acked)
            wait_for(lambda: len(acked) >= at_start + 5, 120, "pushes after the restart")

        pushers, acked = run_pushers(srv.url, 4, restart)
        assert_only_unavailable(pushers)
        check_acknowledged_intact([srv.url], acked)
        check_nothing_half_written(srv.url, pushers)
        print(f"{len(acked)} pushes acknowledged, {len(refusals(pushers))} refused while the database was down")
    finally:
        srv.stop()
