"""Faults under pushes, on blobs in S3 and metadata in PostgreSQL:

- the object store fails: a proxy between Berth and the S3 server adds latency, refuses
  requests with 503 `SlowDown` and loses the answers of requests the store carried out
  (500 after the fact), in a storm between calm phases;
- PostgreSQL is stopped in the middle of pushes and started again.

Clients get the spec's 503 `UNAVAILABLE` with `Retry-After` (never a 500), or succeed;
afterwards every push that was acknowledged pulls back bit-identical, and every blob a failed
push sent is either unknown or whole. Needs BERTH_TEST_POSTGRES (scripts/postgres.sh); S3 is
BERTH_TEST_S3 or a server of scripts/s3.sh."""
import contextlib
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


@contextlib.contextmanager
def berth_on(workdir: str, s3: str, database: str):
    """A Berth on `s3` and `database`; its errors are shown if the test fails."""
    srv = RegistryServer("berth", workdir)
    srv.extra_env = {"REGISTRY_BERTH_DATABASE_URL": database,
                     **s3_env(s3, "/faults-" + uuid.uuid4().hex[:12], redirect=False)}
    srv.start()
    try:
        yield srv
    except AssertionError as e:
        errors = [line[:600] for line in srv.log_text(limit=1 << 30).splitlines() if "ERROR" in line]
        raise AssertionError("\n".join([str(e), "--- berth's errors ---", *errors[-20:]])) from e
    finally:
        srv.stop()


def refusals(pushers) -> list:
    return [r for p in pushers for r in p.refusals]


def push_through(url: str, fault: str, begin, end) -> tuple[list, list]:
    """Pushes in calm, then `begin()`s a fault and keeps pushing until pushes are refused,
    `end()`s it and pushes on; then checks that every push that failed was told to come back
    later, in the spec's words, and that nothing was lost or half written."""
    def phases(pushers, acked):
        wait_for(lambda: len(acked) >= 3, 120, f"pushes before the {fault}")
        begin()
        wait_for(lambda: len(refusals(pushers)) >= 3, 180, f"pushes refused in the {fault}")
        end()
        at_end = len(acked)
        wait_for(lambda: len(acked) >= at_end + 3, 120, f"pushes after the {fault}")

    pushers, acked = run_pushers(url, 4, phases)
    for r in refusals(pushers):
        assert (r.status, r.codes) == (503, ["UNAVAILABLE"]) and r.retry_after, r
    assert not any(p.broken_connections for p in pushers), "Berth stayed up: no connection broke"
    check_acknowledged_intact([url], acked)
    check_nothing_half_written(url, pushers)
    print(f"{len(acked)} pushes acknowledged, {len(refusals(pushers))} refused in the {fault}")
    return pushers, acked


def test_object_store_errors_and_latency(workdir, s3_endpoint):  # noqa: F811 (the fixture imported above)
    print(f"fault seed {SEED} (FAULT_SEED replays)")
    with FaultProxy(s3_endpoint, SEED) as proxy:
        with berth_on(workdir, proxy.url, fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"])) as srv:
            push_through(srv.url, "storm", lambda: proxy.faults.set(refuse=0.5, lose_answer=0.15, max_delay=0.05),
                         proxy.faults.set)
            counts = dict(proxy.faults.counts)
            assert counts["refused"] > 0 and counts["answer_lost"] > 0, counts
            print(f"store requests: {counts}")


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
    with berth_on(workdir, s3_endpoint, start()) as srv:
        push_through(srv.url, "database outage", stop, start)
