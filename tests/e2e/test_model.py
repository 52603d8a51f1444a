"""Model-based concurrency test of the whole HTTP API (see modelcheck.py for the rule).

Many clients on separate connections push, retag, delete, mount and read at random; every
read is checked against a model of the acknowledged writes. The seed is fixed for CI and
printed at the start and in every failure, so a failure replays:

    MODEL_SEED=<seed> MODEL_OPS=<ops per client> MODEL_CLIENTS=<n> \
        python3 -m pytest -q tests/e2e/test_model.py

`run_model(base_url, ...)` only needs a base URL, so the same check can be pointed at a
load balancer in front of several instances: `python3 tests/e2e/modelcheck.py <url>`.
"""
import os

import pytest

from e2eutil import SERVER_KIND, RegistryServer, fresh_postgres_database
from modelcheck import (ABSENT, ANY_TAGGED, DEFAULT_CLIENTS, DEFAULT_OPS, DEFAULT_SEED, INF,
                        Checker, Features, History, Op, Pool, run_model)


def test_model_concurrent_clients(registry):
    seed = int(os.environ.get("MODEL_SEED", DEFAULT_SEED))
    ops = int(os.environ.get("MODEL_OPS", DEFAULT_OPS))
    clients = int(os.environ.get("MODEL_CLIENTS", DEFAULT_CLIENTS))
    run_model(registry.url, seed=seed, ops=ops, clients=clients,
              features=Features.for_server(SERVER_KIND))


@pytest.mark.skipif(SERVER_KIND != "berth" or not os.environ.get("BERTH_TEST_POSTGRES"),
                    reason="needs Berth and a PostgreSQL server (BERTH_TEST_POSTGRES)")
def test_model_two_instances_sharing_postgres(workdir):
    """Two Berth processes on one PostgreSQL database and one blob root: every request
    goes to either, so each read may come from the instance that did not take the write,
    and upload sessions continue on the other instance."""
    env = {"REGISTRY_BERTH_DATABASE_URL": fresh_postgres_database(os.environ["BERTH_TEST_POSTGRES"])}
    root = os.path.join(workdir, "shared-root")
    servers = []
    try:
        for i in range(2):
            d = os.path.join(workdir, f"instance{i}")
            os.makedirs(d)
            srv = RegistryServer("berth", d, root=root)
            srv.extra_env = env
            servers.append(srv)
            srv.start()
        seed = int(os.environ.get("MODEL_SEED", DEFAULT_SEED))
        run_model(",".join(s.url for s in servers), seed=seed,
                  ops=int(os.environ.get("MODEL_OPS", DEFAULT_OPS)),
                  clients=int(os.environ.get("MODEL_CLIENTS", DEFAULT_CLIENTS)),
                  features=Features.for_server("berth"))
    finally:
        for srv in servers:
            srv.stop()


# ---- the checking rule itself, on hand-made histories (no server) ----------------------

def _cands(writes, read, conds=(), key=("tag", "r", "t")):
    h, op = History(), Op(0, 0, "test")
    for value, inv, resp in writes:
        h.write(key, value, inv, resp, op)
    for digest, inv, resp in conds:
        h.cond_delete(key[1], digest, inv, resp, op)
    return Checker(h, Pool(1, "t"), 0.0).candidates(key, *read)


def test_rule_sequential_writes():
    ws = [("D1", 1, 2), ("D2", 3, 4)]
    assert _cands(ws, (0, 0.5)) == {ABSENT}
    assert _cands(ws, (0.5, 1.5)) == {ABSENT, "D1"}       # overlaps the first write
    assert _cands(ws, (2.5, 2.7)) == {"D1"}
    assert _cands(ws, (2.5, 3.5)) == {"D1", "D2"}         # overlaps the second write
    assert _cands(ws, (5, 6)) == {"D2"}                   # the stale-cache case: D1 not allowed


def test_rule_overlapping_writes_either_may_win():
    assert _cands([("D1", 1, 3), ("D2", 2, 4)], (5, 6)) == {"D1", "D2"}
    assert _cands([("D1", 1, 3), ("D2", 2, 4), ("D3", 4.5, 4.8)], (5, 6)) == {"D3"}


def test_rule_unknown_outcome_never_supersedes():
    assert _cands([("D1", 1, 2), ("D2", 3, INF)], (5, 6)) == {"D1", "D2"}
    assert _cands([("D2", 3, INF)], (1, 2)) == {ABSENT}   # not invoked yet


def test_rule_manifest_delete_on_tags():
    # tag -> D, then D deleted: the tag is gone; a tag on another digest is not touched.
    assert _cands([("D", 1, 2)], (5, 6), conds=[("D", 3, 4)]) == {ABSENT}
    assert _cands([("E", 1, 2)], (5, 6), conds=[("D", 3, 4)]) == {"E"}
    # Delete overlapping the push: either order.
    assert _cands([("D", 1, 3)], (5, 6), conds=[("D", 2, 4)]) == {ABSENT, "D"}
    # A push after the delete brings it back.
    assert _cands([("D", 1, 2), ("D", 4.5, 4.8)], (5, 6), conds=[("D", 3, 4)]) == {"D"}


def test_rule_listing_membership():
    assert Checker.allows(ANY_TAGGED, {"D1", ABSENT})
    assert not Checker.allows(ANY_TAGGED, {ABSENT})
    assert Checker.allows(ABSENT, {ABSENT, "D1"})
    assert not Checker.allows(ABSENT, {"D1"})
