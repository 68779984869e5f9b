"""Every Lua script touches one Redis Cluster slot (CROSSSLOT impossible by construction), and
money that must reach another slot moves in a second, idempotent step that `ledger check`
watches (ics.keys, ics.store.money.Money.sync_call), on a real Redis.

The slot test wraps ics.store.Lua, through which every script runs, records the KEYS each
call passes, and drives every script in ics/store/lua/ through the store's own operations.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from ics import capacity, keys, ledger, records, settlement
from ics.store import Lua, Store, now_ms
from ics.store.base import LUA_DIR
from tests.unit.test_ledger_money import bridged_call, new_account

SHARED = {"available"}  # a function other scripts include, never run alone


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple[str, list[str]]] = []
    real = Lua.__call__

    def spy(self, keys=(), args=()):
        seen.append((self.name, list(keys)))
        return real(self, keys, args)

    monkeypatch.setattr(Lua, "__call__", spy)
    return seen


def every_script(store: Store) -> None:
    """The store's operations that, between them, run every script."""
    store.create_facility("main", "Main")
    store.create_inmate("123456", "main", "Alex", "4321")
    store.set_number_state("123456", "3125550100", "approved")
    aid = new_account(store, deposit=5000)
    store.create_account("db1", "Dee", ["3125550101"], "direct_bill", monthly_limit_cents=10_000)
    cid = "20261101120000-slots"
    end = now_ms()
    records.create(store.r, cid, account=aid, rate_cents=25, limit_s=900, outcome="accepted", facility="main",
                   number="3125550100", inmate="123456", started_ms=end - 90_000)
    assert store.reserve(aid, cid, 25, minutes=1)
    assert store.extend_hold(aid, cid, 25, 1) == "held"
    records.update(store.r, cid, bridged_ms=end - 50_000, ended_ms=end)
    records.record_system_drop(store.r, cid, "test", end - 1000)
    settlement.settle(store, cid)  # settle, count_week, synced, credit
    assert records.get(store.r, cid)["credited_cents"] > 0
    store.refund(aid, 100, "asked")
    store.refund(aid, None, "closing")
    store.expire_account(aid, now=now_ms() + 400 * 86_400_000)
    store.dispose_expired(aid, "unclaimed")
    capacity.check(store.r, 10, admit="1.1")
    assert store.take_courtesy("3125550102", "c9") and store.give_back_courtesy("3125550102", "c9")


def test_every_script_touches_one_slot(store, calls):
    every_script(store)
    scripts = {p.stem for p in LUA_DIR.glob("*.lua")} - SHARED
    assert scripts - {name for name, _ in calls} == set(), "a script the scenario does not run"
    for name, ks in calls:
        assert ks, f"{name} was called without KEYS"
        slots = {key_slot(k.encode()) for k in ks}
        assert len(slots) == 1, f"{name} touches {len(slots)} slots: {ks}"


def test_the_slot_check_would_see_a_cross_slot_call():
    # what the test above asserts, on keys a script once took together (call record + account)
    assert len({key_slot(k.encode()) for k in (keys.call("c1"), keys.account("fam1"))}) == 2
    assert len({key_slot(k.encode()) for k in (keys.call_money("fam1", "c1"), keys.account("fam1"),
                                               keys.ledger("fam1"), keys.account_month("fam1", "202612"))}) == 1


# --- two steps: a settlement left half-done --------------------------------------------------

def week_of(store: Store, cid: str) -> tuple[int, int]:
    rec = records.get(store.r, cid)
    from ics import policy
    return store.week_usage(rec["inmate"], policy.week_of(rec["started_ms"], "UTC"))


@pytest.mark.parametrize("crash_in", ["_count_week", "_synced"])
def test_a_settlement_cut_after_its_money_step_is_found_by_ledger_check_and_completed_by_a_retry(
        store, monkeypatch, crash_in):
    store.create_facility("main", "Main")
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=30)
    records.update(store.r, cid, facility="main")
    assert ledger.check(store.r)["ok"]

    def crash(*a, **k):
        raise ConnectionError("the settling process died here")

    with monkeypatch.context() as m:  # the process dies after the money moved in the account's slot
        m.setattr(store, crash_in, crash)
        with pytest.raises(ConnectionError):
            settlement.settle(store, cid)
    assert store.call_money(aid, cid)["settled"] == 1  # step 1 done: the money moved, once
    doc = ledger.check(store.r)
    assert not doc["ok"] and doc["failed"] == [aid]
    problems = " ".join(next(d for d in doc["accounts"] if d["account"] == aid)["problems"])
    assert "half-done" in problems and cid in problems
    counted_before = week_of(store, cid)
    assert counted_before == ((0, 0) if crash_in == "_count_week" else (1, 1))

    rec = settlement.settle(store, cid)  # the retry (hangup handler, listener, icsctl calls settle)
    assert rec["settled"] == "1" and rec["billed_cents"] == 25 and rec["billed_minutes"] == 1
    assert week_of(store, cid) == (1, 1)  # counted once, whichever step the crash cut
    assert ledger.check(store.r)["ok"]
    settlement.settle(store, cid)  # and a replay changes nothing
    assert week_of(store, cid) == (1, 1)
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit", "charge"]
    assert store.account(aid).balance_cents == 1000 - 25


def test_a_hold_whose_copy_was_lost_is_reported_then_completed(store, monkeypatch):
    aid = new_account(store, deposit=1000)
    cid = "20261101120000-half"
    records.create(store.r, cid, account=aid, rate_cents=25, limit_s=900, outcome="dialing")
    monkeypatch.setattr(store, "sync_call", lambda *a: None)  # the copy never happens
    assert store.reserve(aid, cid, 25, minutes=1)
    monkeypatch.undo()
    assert records.get(store.r, cid).get("paid_minutes") is None
    assert not ledger.check(store.r)["ok"]
    store.sync_call(aid, cid)
    assert records.get(store.r, cid)["paid_minutes"] == 1 and ledger.check(store.r)["ok"]


# --- data stored before hash tags --------------------------------------------------------------

def test_keys_stored_before_hash_tags_are_renamed_once_and_balances_still_check(store):
    r = store.r
    r.hset("ics:account:fam1", mapping={"type": "prepaid", "owner": "Sam", "balance_cents": 489, "held_cents": 0,
                                        "created_ms": now_ms()})
    r.sadd("ics:accounts", "fam1")
    r.sadd("ics:account:fam1:numbers", "+13125550100")
    r.xadd("ics:ledger:fam1", {"kind": "deposit", "amount_cents": 500, "balance_cents": 500, "call": "", "ts": 1})
    r.xadd("ics:ledger:fam1", {"kind": "charge", "amount_cents": 11, "balance_cents": 489, "call": "c0", "ts": 2})
    r.hset("ics:account:busy", mapping={"type": "prepaid", "balance_cents": 100, "held_cents": 11})
    r.hset("ics:inmate:123456", mapping={"facility": "main", "name": "Alex"})
    r.hset("ics:inmate:123456:week:2026W48", mapping={"calls": 2, "minutes": 7})
    r.expire("ics:inmate:123456:week:2026W48", 1000)
    assert store.untagged_keys() == ["ics:account:busy", "ics:account:fam1", "ics:account:fam1:numbers",
                                     "ics:inmate:123456", "ics:inmate:123456:week:2026W48", "ics:ledger:fam1"]
    done = store.migrate_keys()
    assert len(done["migrated"]) == 5 and done["refused"] == ["account busy holds money for calls in progress"]
    assert store.account("fam1").balance_cents == 489 and store.account_numbers("fam1") == ["+13125550100"]
    assert [e["kind"] for e in store.ledger("fam1")] == ["deposit", "charge"]
    assert store.inmate("123456")["name"] == "Alex" and store.week_usage("123456", "2026W48") == (2, 7)
    assert 0 < r.ttl(keys.inmate_week("123456", "2026W48")) <= 1000
    assert not r.exists("ics:account:fam1", "ics:ledger:fam1", "ics:inmate:123456")
    assert ledger.check_account(r, "fam1")["problems"] == []
    again = store.migrate_keys()
    assert again["migrated"] == [] and again["kept_existing"] == []
    assert store.untagged_keys() == ["ics:account:busy"]  # ics-fastagi still refuses to start on it
