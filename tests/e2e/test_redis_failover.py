"""Redis Cluster lab (make test-redis-cluster; skipped on a single Redis): the master holding a live
call's account is SIGKILLed mid-call. Its replica takes over (cluster-node-timeout 1000 ms in the
lab, docker/redis-cluster.sh), the call goes on, and when it ends it is settled once: one charge,
no hold left, `ledger check` passes (nothing lost or doubled)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
import redis
from redis.connection import parse_url
from redis.crc import key_slot

from ics import keys, ledger
from tests.e2e.test_billing_calls import accept, charges
from tests.e2e.test_collect_call import lines  # noqa: F401 (fixture)
from tests.support import REPO, stack_dir, stack_setting
from tests.support.callflow import balance, latest_call, make_world, wait_settled

CLUSTER = (stack_setting("ICS_REDIS_CLUSTER") or "").lower() in ("1", "true", "yes", "on")
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not CLUSTER, reason="needs the Redis Cluster lab (make test-redis-cluster)")]
CLUSTER_DIR = stack_dir() / "redis-cluster"
FIRST_PORT = 7000  # docker/stack.sh CLUSTER_PORT
FAILOVER_MAX_S = 10


def admin_password() -> str:
    """(read when the test runs: the worker's stack.env is written when its stack starts)"""
    return parse_url(stack_setting("ICS_STACK_REDIS_ADMIN_URL").split(",")[0])["password"]


def master_port(slot: int, ask: int) -> int | None:
    """The port of the master serving slot, as node `ask` sees it (None while it has none)."""
    try:
        slots = redis.Redis(port=ask, password=admin_password(), socket_timeout=1, decode_responses=True).execute_command("CLUSTER SLOTS")
    except redis.RedisError:
        return None
    for lo, hi, primary, *_replicas in slots:  # [[first, last, [host, port, id], replicas...], ...]
        if lo <= slot <= hi:
            return int(primary[1])
    return None


@contextlib.contextmanager
def account_master_killed(world):
    """SIGKILL the master holding the world's account; returns once its replica serves the
    slot (seconds it took); afterwards the killed node comes back, a replica of the new master,
    with the stack's ACL users."""
    slot = key_slot(keys.account(world.account).encode())
    killed = world.store.r.get_node_from_key(keys.account(world.account)).port
    other = next(p for p in range(FIRST_PORT, FIRST_PORT + 6) if p != killed)
    os.kill(int((CLUSTER_DIR / str(killed) / "redis.pid").read_text()), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        new = None
        while time.monotonic() - t0 < FAILOVER_MAX_S:
            new = master_port(slot, other)
            if new not in (None, killed):
                break
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert new not in (None, killed), f"no replica took over slot {slot} within {FAILOVER_MAX_S}s"
        print(f"failover of slot {slot}: {killed} -> {new} in {took:.1f}s")
        yield took
    finally:
        subprocess.run(["bash", str(REPO / "docker" / "redis-cluster.sh"), "start", str(CLUSTER_DIR),
                        str(FIRST_PORT)], check=True, timeout=60,
                       env={**os.environ, "ICS_REDIS_ACLFILE": str(stack_dir() / "redis" / "users.acl"),
                            "ICS_REDIS_ADMIN_PASSWORD": admin_password()})


def test_a_master_killed_mid_call_fails_over_and_the_call_is_settled_once(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500, rule_silence=False)
    call, callee = accept(ami, inmate, family)
    call_id = latest_call(world)["call_id"]
    with account_master_killed(world):
        time.sleep(2)
        assert not call.disconnected and not callee.disconnected  # the call goes on
        call.hangup()
        callee.wait_disconnected(10)
        rec = wait_settled(world, timeout=30)
    assert (rec["reason"], rec["billed_minutes"], rec["billed_cents"]) == ("inmate_hangup", 1, 11)
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert balance(world) == 500 - 11 and world.store.account(world.account).held_cents == 0
    doc = ledger.check(world.store.r)
    assert doc["ok"], doc
