"""redis.wait_replicas: every money script is followed by WAIT on the connection that ran it,
on a real Redis with a real replica (and without one: the write stands, logged)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis
import structlog.testing

from ics import config
from ics.store import Store, connect
from tests.unit.conftest import _start


def store_on(url: str, tmp_path, replicas: int) -> Store:
    cfg = config.load(environ={"ICS_REDIS_URL": url, "ICS_SOUNDS_DIR": str(tmp_path),
                               "ICS_REDIS_WAIT_REPLICAS": str(replicas), "ICS_REDIS_WAIT_TIMEOUT_MS": "1500"})
    return Store(connect(cfg), cfg)


@pytest.fixture
def primary_and_replica(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    primary, p = _start(exe, tmp_path)
    (tmp_path / "r").mkdir()
    replica, q = _start(exe, tmp_path / "r")
    try:
        yield p, q
    finally:
        for proc in (primary, replica):
            proc.terminate()
            proc.wait(5)
            proc.stdout.close()


def test_money_scripts_wait_for_a_replica_and_say_when_none_confirmed(primary_and_replica, tmp_path):
    p, q = primary_and_replica
    store = store_on(f"redis://127.0.0.1:{p}/0", tmp_path, replicas=1)
    store.create_account("fam1", "Sam", ["3125550100"])
    with structlog.testing.capture_logs() as logs:  # no replica yet: WAIT times out, the write stands
        assert store.adjust("fam1", "deposit", 500) == 500
    assert [e["event"] for e in logs] == ["redis.wait_short"] and logs[0]["replicas"] == 0
    subprocess.run(["redis-cli", "-p", str(q), "replicaof", "127.0.0.1", str(p)], check=True, capture_output=True)
    replica = redis.Redis(port=q, decode_responses=True)
    for _ in range(100):  # the replica has synced
        if replica.info("replication").get("master_link_status") == "up":
            break
        time.sleep(0.05)
    with structlog.testing.capture_logs() as logs:
        assert store.adjust("fam1", "deposit", 100) == 600
        assert store.reserve("fam1", "c1", 25, minutes=1)
    assert logs == []  # confirmed by the replica each time
    assert replica.hget("ics:account:{a:fam1}", "balance_cents") == "600"
