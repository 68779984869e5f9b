"""Minute-by-minute holds (ics.store extend_hold) on a real Redis, and the rule side of them.

A live call holds each next minute before it starts; calls sharing one account
draw on it minute by minute and none is ever overdrawn. A minute held twice by
two listeners (or a retry after a restart) is held once.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

from ami.rules import LiveCall, Policy
from ics import ledger, rating
from ics.store import Store

RATE, TAX = 7, 750


def minute_cost(paid: int) -> int:
    """What the minute after `paid` adds: cumulative holds always equal the price of the minutes."""
    return rating.price(RATE, (paid + 1) * 60_000, TAX).cents - rating.price(RATE, paid * 60_000, TAX).cents


def start_call(store: Store, aid: str, cid: str) -> bool:
    return store.reserve(aid, cid, minute_cost(0), minutes=1)


def test_the_next_minute_is_held_once_even_if_asked_twice(store):
    store.create_account("fam1", "Sam", [])
    store.adjust("fam1", "deposit", 100)
    assert start_call(store, "fam1", "c1")
    assert store.extend_hold("fam1", "c1", minute_cost(1), 1) == "held"
    assert store.extend_hold("fam1", "c1", minute_cost(1), 1) == "stale"  # a second listener, same view
    assert store.r.hget("ics:call:c1", "paid_minutes") == "2"
    assert store.account("fam1").held_cents == rating.price(RATE, 120_000, TAX).cents
    store.settle("c1", "fam1", rating.price(RATE, 90_000, TAX).cents, 2, RATE)
    assert store.extend_hold("fam1", "c1", minute_cost(2), 2) == "settled"
    assert store.account("fam1").held_cents == 0


def test_a_minute_the_account_cannot_cover_is_not_held(store):
    store.create_account("fam1", "Sam", [])
    store.adjust("fam1", "deposit", minute_cost(0) + minute_cost(1) - 1)
    assert start_call(store, "fam1", "c1")
    assert store.extend_hold("fam1", "c1", minute_cost(1), 1) == "short"
    assert store.account("fam1").held_cents == minute_cost(0)


def test_concurrent_calls_draw_one_account_minute_by_minute_and_never_overdraw(store):
    deposit = 1_000
    store.create_account("fam1", "Sam", [])
    store.adjust("fam1", "deposit", deposit)
    go = threading.Barrier(40)

    def one_call(i: int) -> int:
        rnd, cid = random.Random(i), f"20261122000000-{i:08x}"
        go.wait()
        if not start_call(store, "fam1", cid):
            return 0
        paid, wanted = 1, rnd.randint(1, 12)
        while paid < wanted and store.extend_hold("fam1", cid, minute_cost(paid), paid) == "held":
            paid += 1
        talked = rnd.randint((paid - 1) * 60_000, paid * 60_000)  # ended within its last paid minute
        bill = rating.price(RATE, talked, TAX)
        first, cents, _ = store.settle(cid, "fam1", bill.cents, bill.minutes, RATE, bill.tax_cents)
        assert first and cents <= rating.price(RATE, paid * 60_000, TAX).cents
        return cents

    with ThreadPoolExecutor(max_workers=40) as pool:
        charged = sum(pool.map(one_call, range(40)))
    acct = store.account("fam1")
    assert acct.balance_cents >= 0 and acct.held_cents == 0
    assert charged == deposit - acct.balance_cents
    assert ledger.check(store.r)["ok"]


def test_funds_running_short_end_the_call_with_its_paid_minutes():
    call = LiveCall("1.1", call_id="c1", inmate="A", channels={"A": "1.1", "B": "1.2"},
                    policy=Policy(silence=False, warn_before_s=(60, 30)))
    call.start(now=0)
    call.bridged_ms, call.limit_ms, call.paid_ms = 1_000_000, 900_000, 60_000
    assert not call.extension_due(1_000_000 + 49_999, 10_000)
    assert call.extension_due(1_000_000 + 50_000, 10_000)
    call.funds_ran_short()
    assert not call.extension_due(1_000_000 + 50_000, 10_000)
    # both earlier notices fell due at once: only what is really left is said
    assert call.tick(now=1, wall_ms=1_000_000 + 50_200) == (None, [10])
    cut, _ = call.tick(now=1, wall_ms=1_060_000)
    assert cut.reason == "time_limit" and cut.at_ms == 1_060_000
    assert cut.threshold == "paid_minutes=1: the account could not hold the next"
