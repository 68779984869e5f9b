"""Account types, the LIDB table and the direct-bill month counter, on a real Redis.

Money is integer cents. A direct_bill account spends its monthly limit, tracked
once per call inside the settle Lua; a deposit credits exactly its amount (no
ancillary fees exist).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ics.destination import e164
from ics import keys, ledger
from ics.store import Store, StoreError, month_of

INMATE, PIN, LAND, CELL = "123456", "4321", "3125550100", "3125550199"
_ids = itertools.count()


def new_call() -> str:
    return f"20260501120000-{next(_ids):08x}"


@pytest.fixture
def inmate(store: Store) -> str:
    store.create_facility("main", "Main")
    store.create_inmate(INMATE, "main", "Alex", PIN)
    return INMATE


# --- LIDB ----------------------------------------------------------------------------

def test_unknown_numbers_are_landlines_without_blocks(store):
    assert store.lidb(LAND) == {"number": e164(LAND), "known": False, "line_type": "landline",
                                "collect_block": False, "new_number": False}
    assert store.collect_problem(LAND) is None


def test_lidb_records_and_what_stops_collect_billing(store):
    store.set_lidb(CELL, "wireless")
    assert store.collect_problem(CELL) == f"{e164(CELL)} is a wireless line"
    store.set_lidb(LAND, "landline", collect_block=True)
    assert "collect-call block" in store.collect_problem(LAND)
    store.set_lidb(LAND, "landline", new_number=True)
    assert store.lidb(LAND)["new_number"] and "new-number restriction" in store.collect_problem(LAND)
    with pytest.raises(StoreError, match="line type must be one of landline, wireless, voip"):
        store.set_lidb(LAND, "satellite")
    with pytest.raises(StoreError, match="invalid number"):
        store.set_lidb("12345", "landline")


# --- creation ------------------------------------------------------------------------

def test_direct_bill_refuses_unbillable_numbers_at_creation(store):
    store.set_lidb(CELL, "voip")
    with pytest.raises(StoreError, match=f"{CELL} is a voip line"):
        store.create_account("db1", "Sam", [CELL], "direct_bill", monthly_limit_cents=5000)
    with pytest.raises(StoreError, match="needs a monthly limit"):
        store.create_account("db1", "Sam", [LAND], "direct_bill")
    with pytest.raises(StoreError, match="only a direct_bill account has a monthly limit"):
        store.create_account("pp1", "Sam", [LAND], monthly_limit_cents=5000)
    assert not store.r.exists(keys.account("db1")) and not store.r.exists(keys.number_account(CELL))
    store.create_account("db1", "Sam", [LAND], "direct_bill", monthly_limit_cents=5000)
    acct = store.account("db1")
    assert (acct.type, acct.monthly_limit_cents, acct.available_cents) == ("direct_bill", 5000, 5000)


def test_inmate_debit_is_the_inmates_own_account(store, inmate):
    with pytest.raises(StoreError, match="is 'debit-123456', not 'mine'"):
        store.create_account("mine", "Alex", [], "inmate_debit", inmate=inmate)
    with pytest.raises(StoreError, match="needs an existing inmate"):
        store.create_account("debit-999999", "X", [], "inmate_debit", inmate="999999")
    with pytest.raises(StoreError, match="not for numbers"):
        store.create_account("debit-123456", "Alex", [LAND], "inmate_debit", inmate=inmate)
    assert store.debit_account(inmate) is None
    store.create_account("debit-123456", "Alex", [], "inmate_debit", inmate=inmate)
    assert store.debit_account(inmate).inmate == inmate
    with pytest.raises(StoreError, match="unsupported account type 'collect'"):
        store.create_account("x", "X", [], "collect")


@given(st.integers(min_value=1, max_value=100_000_00))
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_a_deposit_credits_exactly_its_amount(store, amount):
    aid = f"pp{next(_ids)}"
    store.create_account(aid, "Sam", [])
    assert store.adjust(aid, "deposit", amount, "card") == amount  # no deposit, payment or account fee
    assert store.account(aid).available_cents == amount
    [entry] = store.ledger(aid)
    assert (entry["kind"], int(entry["amount_cents"]), int(entry["balance_cents"])) == ("deposit", amount, amount)


# --- direct bill: limit from the month's billed total ----------------------------------

def test_direct_bill_holds_and_bills_against_the_monthly_limit(clock, store):
    store.create_account("db1", "Sam", [LAND], "direct_bill", monthly_limit_cents=100)
    c1, c2 = new_call(), new_call()
    assert store.reserve("db1", c1, 60)
    assert not store.reserve("db1", c2, 41)  # 100 - 60 held
    assert store.settle(c1, "db1", 33, 3, 11) == (True, 33, 3)
    assert store.settle(c1, "db1", 33, 3, 11) == (False, 33, 3)  # idempotent: the month counts it once
    month = keys.account_month("db1", month_of(clock()))
    assert store.r.get(month) == "33"
    acct = store.account("db1")
    assert (acct.held_cents, acct.month_billed_cents, acct.available_cents) == (0, 33, 67)
    assert acct.balance_cents == -33  # owed
    assert not store.reserve("db1", c2, 68) and store.reserve("db1", c2, 67)
    [charge] = store.ledger("db1")
    assert charge["kind"] == "charge" and charge["month_billed_cents"] == "33"
    assert ledger.check_account(store.r, "db1")["problems"] == []


def test_prepaid_settle_leaves_no_month_counter(store):
    store.create_account("pp1", "Sam", [LAND])
    store.adjust("pp1", "deposit", 100)
    call = new_call()
    assert store.reserve("pp1", call, 50)
    store.settle(call, "pp1", 22, 2, 11)
    assert list(store.r.scan_iter(keys.account_month("pp1", "*"))) == []
    assert store.account("pp1").balance_cents == 78
