"""Upgrading data stored before hash tags (README, Upgrading): ics-fastagi refuses to start on it
(keys.migration_needed), `icsctl keys migrate` renames it as icsctl's own Redis ACL user, then
ics-fastagi starts and the account is what icsctl shows; docker/stack.sh up does the same by itself.

The stack's real Redis with its ACL users (.stack/redis/users.acl from ics.redis_acl), the installed
ics-fastagi and icsctl started the way docker/stack.sh starts them.
"""

import json
import os
import subprocess
import time

import pytest

from ics import keys
from tests.support import REPO, services, stack_dir

pytestmark = pytest.mark.e2e

BIN = REPO / ".venv" / "bin"
NUMBER = "+13125550100"
# the layout before hash tags, as the lab stored it (the account, its number and ledger; an inmate
# with an approved number)
OLD_KEYS = ["ics:account:fam1", "ics:account:fam1:numbers", "ics:inmate:123456", "ics:inmate:123456:approved",
            "ics:ledger:fam1"]


def seed_old_layout(admin) -> None:
    admin.hset("ics:account:fam1", mapping={"type": "prepaid", "owner": "Sam Doe", "balance_cents": 489,
                                            "held_cents": 0, "created_ms": 1796003990750})
    admin.sadd(keys.ACCOUNTS, "fam1")
    admin.sadd("ics:account:fam1:numbers", NUMBER)
    admin.set(keys.number_account(NUMBER), "fam1")
    admin.xadd("ics:ledger:fam1", {"kind": "deposit", "amount_cents": 500, "balance_cents": 500, "call": "",
                                   "note": "test deposit", "ts": 1796003990750})
    admin.xadd("ics:ledger:fam1", {"kind": "charge", "amount_cents": 11, "balance_cents": 489, "call": "c0",
                                   "note": "", "ts": 1796003990999, "minutes": 1})
    admin.hset("ics:inmate:123456", mapping={"facility": "main", "name": "Alex Doe", "pin_locked": 0})
    admin.sadd(keys.INMATES, "123456")
    admin.hset("ics:inmate:123456:approved", NUMBER, "approved")


def fastagi(**popen) -> subprocess.Popen:
    """ics-fastagi as docker/stack.sh start_service runs it: stack.env, then its own fastagi.env
    (the fastagi ACL user)."""
    return subprocess.Popen(["bash", "-c", 'set -a; . "$1"; . "$2"; set +a; exec "$3"', "_",
                             str(stack_dir() / "stack.env"), str(stack_dir() / "fastagi.env"),
                             str(BIN / "ics-fastagi")], env={"PATH": os.environ["PATH"]},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def serve_once() -> str:
    """Start ics-fastagi, wait for its service.start, stop it (SIGTERM); its log lines."""
    started, lines = fastagi(), []
    try:
        deadline = time.monotonic() + 30
        while not events("".join(lines), "service.start"):
            assert time.monotonic() < deadline and started.poll() is None, "".join(lines)
            lines.append(started.stdout.readline())
    finally:
        started.terminate()
        started.wait(timeout=30)
    return "".join(lines)


def events(text: str, name: str) -> list[dict]:
    return [doc for doc in (json.loads(ln) for ln in text.splitlines() if ln.startswith("{"))
            if doc.get("event") == name]


def icsctl(*args: str) -> subprocess.CompletedProcess:
    """The installed icsctl as its own Redis user (stack.env, in os.environ for e2e tests)."""
    assert os.environ["ICS_REDIS_USERNAME"] == "icsctl"
    return subprocess.run([str(BIN / "icsctl"), *args], capture_output=True, text=True, timeout=60,
                          env=os.environ.copy())


def test_fastagi_refuses_old_keys_until_icsctl_keys_migrate_renames_them(stack, redis_client):
    services.kill("fastagi")
    try:
        seed_old_layout(redis_client)
        refused = fastagi()
        output, _ = refused.communicate(timeout=60)
        assert refused.returncode == 1, output
        (needed,) = events(output, "keys.migration_needed")
        assert needed["count"] == len(OLD_KEYS) and needed["examples"] == OLD_KEYS
        assert needed["fix"] == "run: icsctl keys migrate"
        assert not events(output, "service.start")
        assert redis_client.exists(*OLD_KEYS) == len(OLD_KEYS)  # it changed nothing

        run = icsctl("keys", "migrate")
        assert run.returncode == 0, run.stderr
        assert f"migrated      ics:account:fam1 -> {keys.account('fam1')}" in run.stdout
        assert f"migrated      ics:ledger:fam1 -> {keys.ledger('fam1')}" in run.stdout
        assert run.stdout.splitlines()[-1] == "5 migrated, 0 already there, 0 refused"
        assert events(run.stderr, "ops.keys_migrate")[0]["migrated"] == 5
        assert redis_client.exists(*OLD_KEYS) == 0
        again = icsctl("keys", "migrate", "--quiet")  # idempotent; silent with nothing to do
        assert (again.returncode, again.stdout, again.stderr) == (0, "", "")

        serve_once()  # the same server, the same fastagi user: now it serves
    finally:
        services.restart("fastagi")

    show = json.loads(icsctl("account", "show", "fam1", "--json").stdout)
    assert (show["balance_cents"], show["held_cents"], show["numbers"]) == (489, 0, [NUMBER])
    ledger = json.loads(icsctl("account", "ledger", "fam1", "--json").stdout)["entries"]
    assert [(e["kind"], e["amount_cents"], e["balance_cents"]) for e in ledger] == [
        ("deposit", 500, 500), ("charge", 11, 489)]
    check = icsctl("ledger", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    listed = json.loads(icsctl("inmate", "numbers", "123456", "--json").stdout)["numbers"]
    assert [(n["number"], n["approval"], n["account"], n["available_cents"]) for n in listed] == [
        (NUMBER, "approved", "fam1", 489)]


def test_an_account_holding_money_under_the_old_layout_is_left_and_icsctl_exits_1(stack, redis_client):
    seed_old_layout(redis_client)
    redis_client.hset("ics:account:fam1", "held_cents", 25)  # a call of the old version still live
    run = icsctl("keys", "migrate")
    assert run.returncode == 1
    assert "refused       account fam1 holds money for calls in progress" in run.stdout
    assert "let their calls end" in run.stderr
    assert redis_client.hget("ics:account:fam1", "balance_cents") == "489"  # left as it was
    redis_client.flushdb()


def test_stack_up_renames_old_keys_before_fastagi_starts(stack, redis_client):
    """The lab upgrade: docker/stack.sh up on old data runs icsctl keys migrate, then FastAGI."""
    services.kill("fastagi")
    seed_old_layout(redis_client)
    services.restart("fastagi")
    assert redis_client.exists(*OLD_KEYS) == 0
    assert redis_client.hget(keys.account("fam1"), "balance_cents") == "489"
    assert redis_client.hget(keys.approved("123456"), NUMBER) == "approved"


def test_fastagi_rewrites_number_keys_stored_before_e164_as_its_own_user(stack, redis_client):
    """Its own start-up step (Store.migrate_numbers) renames number keys within the fastagi user's
    rights: no RESTORE (the stack's ACL log, checked after every e2e test, stays empty)."""
    services.kill("fastagi")
    try:
        redis_client.set("ics:number:3125550100", "fam1")
        redis_client.hset("ics:lidb:3125550100", mapping={"line_type": "landline", "collect_block": 0})
        redis_client.set("ics:courtesy:3125550101", "c0", px=600_000)
        output = serve_once()
        assert events(output, "numbers.migrated")[0]["migrated"] == 3
    finally:
        services.restart("fastagi")
    assert redis_client.get(keys.number_account(NUMBER)) == "fam1"
    assert redis_client.hgetall(keys.lidb(NUMBER)) == {"line_type": "landline", "collect_block": "0"}
    assert 0 < redis_client.pttl(keys.courtesy("+13125550101")) <= 600_000
    assert not redis_client.exists("ics:number:3125550100", "ics:lidb:3125550100", "ics:courtesy:3125550101")
