"""The Lua money operations in ics.store, on a real Redis.

Holds never overdraw, a call is charged once and never more than its hold, a
refund cannot take held or missing money, and the balance is always what the
ledger stream says it is.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ics import keys
from ics.store import Store, StoreError

NUMBER = "3125550100"
_ids = itertools.count()


def new_account(store: Store, deposit: int = 0) -> str:
    aid = f"acct{next(_ids)}"
    store.create_account(aid, "Owner", [])
    if deposit:
        store.adjust(aid, "deposit", deposit, "test")
    return aid


def new_call() -> str:
    return f"20240501120000-{next(_ids):08x}"


def ledger_balance(store: Store, aid: str) -> int:
    sign = {"deposit": 1, "credit": 1, "charge": -1, "refund": -1}
    return sum(sign[e["kind"]] * int(e["amount_cents"]) for e in store.ledger(aid))


def test_reserve_refuses_more_than_available(store):
    aid = new_account(store, deposit=100)
    assert store.reserve(aid, new_call(), 60)
    call = new_call()
    assert not store.reserve(aid, call, 41)  # 40 available
    acct = store.account(aid)
    assert (acct.balance_cents, acct.held_cents, acct.available_cents) == (100, 60, 40)
    assert not store.r.hexists(keys.call(call), "held_cents")
    assert store.reserve(aid, call, 40)
    assert store.account(aid).available_cents == 0


def test_reserve_errors(store):
    with pytest.raises(StoreError, match="no account"):
        store.reserve("nobody", new_call(), 1)
    aid = new_account(store, deposit=100)
    call = new_call()
    assert store.reserve(aid, call, 10)
    with pytest.raises(StoreError, match="already holds funds"):
        store.reserve(aid, call, 10)
    assert store.account(aid).held_cents == 10


def test_settle_twice_charges_once(store):
    aid = new_account(store, deposit=500)
    call = new_call()
    assert store.reserve(aid, call, 99)
    assert store.settle(call, aid, 33, 3, 11) == (True, 33, 3)
    after_first = store.account(aid)
    assert (after_first.balance_cents, after_first.held_cents) == (467, 0)
    # a duplicate hang-up, even with other figures, changes nothing and reports the first bill
    assert store.settle(call, aid, 99, 9, 11) == (False, 33, 3)
    again = store.account(aid)
    assert (again.balance_cents, again.held_cents) == (467, 0)
    charges = [e for e in store.ledger(aid) if e["kind"] == "charge"]
    assert len(charges) == 1 and charges[0]["amount_cents"] == "33" and charges[0]["call"] == call


def test_settle_caps_the_charge_at_the_hold(store):
    aid = new_account(store, deposit=500)
    call = new_call()
    assert store.reserve(aid, call, 99)  # 9 minutes at 11 cents
    assert store.settle(call, aid, 110, 10, 11) == (True, 99, 9)
    acct = store.account(aid)
    assert (acct.balance_cents, acct.held_cents) == (401, 0)
    assert store.r.hget(keys.call(call), "billed_cents") == "99"


def test_settle_without_a_hold_charges_nothing(store):
    aid = new_account(store, deposit=500)
    call = new_call()
    assert store.settle(call, aid, 0, 0, 11) == (True, 0, 0)
    assert store.account(aid).balance_cents == 500
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit"]


def test_refund_larger_than_available_is_refused(store):
    aid = new_account(store, deposit=500)
    assert store.reserve(aid, new_call(), 300)
    with pytest.raises(StoreError, match="exceeds the 200 cents available"):
        store.adjust(aid, "refund", 201)
    acct = store.account(aid)
    assert (acct.balance_cents, acct.held_cents) == (500, 300)
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit"]
    assert store.adjust(aid, "refund", 200) == 300
    assert store.account(aid).available_cents == 0


@pytest.mark.parametrize("amount", [0, -5, 1.5, True, "100"])
def test_adjust_takes_only_positive_whole_cents(store, amount):
    aid = new_account(store)
    with pytest.raises(StoreError, match="positive whole number of cents"):
        store.adjust(aid, "deposit", amount)
    assert store.account(aid).balance_cents == 0 and store.ledger(aid) == []


def test_adjust_on_a_missing_account(store):
    with pytest.raises(StoreError, match="no account"):
        store.adjust("nobody", "deposit", 100)
    assert not store.r.exists(keys.ledger("nobody"))


cents = st.integers(min_value=1, max_value=5_000)
operations = st.lists(st.one_of(
    st.tuples(st.just("deposit"), cents),
    st.tuples(st.just("credit"), cents),
    st.tuples(st.just("refund"), cents),
    # a call: hold, then the bill (which may run past the hold), settled once or twice
    st.tuples(st.just("call"), cents, st.integers(min_value=0, max_value=6_000), st.booleans()),
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_balance_is_what_the_ledger_says(store, ops):
    aid = new_account(store)
    expected = 0
    for op in ops:
        if op[0] == "call":
            _, hold, charge, twice = op
            call = new_call()
            if store.reserve(aid, call, hold):
                first, billed, minutes = store.settle(call, aid, charge, charge // 11, 11)
                assert first and billed == min(charge, hold)
                if twice:
                    assert store.settle(call, aid, charge + 1, 0, 11) == (False, billed, minutes)
                expected -= billed
            else:
                assert hold > store.account(aid).available_cents
        elif op[0] == "refund":
            available = store.account(aid).available_cents
            if op[1] > available:
                with pytest.raises(StoreError):
                    store.adjust(aid, "refund", op[1])
            else:
                store.adjust(aid, "refund", op[1])
                expected -= op[1]
        else:
            store.adjust(aid, op[0], op[1])
            expected += op[1]
        acct = store.account(aid)
        assert acct.balance_cents >= 0 and acct.held_cents == 0

    acct = store.account(aid)
    assert acct.balance_cents == expected == ledger_balance(store, aid)
    running = 0
    for e in store.ledger(aid):  # every entry records the balance it left behind
        running += {"deposit": 1, "credit": 1, "charge": -1, "refund": -1}[e["kind"]] * int(e["amount_cents"])
        assert int(e["balance_cents"]) == running
