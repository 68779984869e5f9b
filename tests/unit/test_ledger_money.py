"""Ledger check, refunds, 180-day expiry, automatic credits, statements and concurrent draining,
all on a real Redis (the conftest's redis-server).
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import structlog

from ics import cli, keys, ledger, rating, records, settlement, statements
from ics.store import AUTO_CREDIT_MS, INACTIVITY_MS, AccountExpired, Store, StoreError, now_ms

DAY_MS = 86_400_000
_ids = itertools.count()


def new_account(store: Store, deposit: int = 0, numbers: list[str] | None = None) -> str:
    aid = f"acct{next(_ids)}"
    store.create_account(aid, "Sam Doe", numbers or [])
    if deposit:
        store.adjust(aid, "deposit", deposit, "test")
    return aid


def new_call() -> str:
    return f"20261101120000-{next(_ids):08x}"


@pytest.fixture
def run(redis_url, tmp_path, monkeypatch, capsys):
    """run(*argv) -> (status, stdout, stderr) of one icsctl command."""
    monkeypatch.delenv("ICS_CONFIG", raising=False)
    monkeypatch.setenv("ICS_REDIS_URL", redis_url)
    monkeypatch.setenv("ICS_SOUNDS_DIR", str(tmp_path / "sounds"))
    monkeypatch.setenv("ICS_LOG_FORMAT", "json")

    def go(*argv: str):
        capsys.readouterr()
        status = cli.main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    yield go
    structlog.reset_defaults()


def bridged_call(store: Store, aid: str, *, rate: int = 25, bridged_s: float = 30, reason: str | None = None,
                 number: str = "3125550100", inmate: str = "123456") -> str:
    """A call that held funds, was bridged for bridged_s and has ended (not yet settled)."""
    cid = new_call()
    end = now_ms()
    records.create(store.r, cid, account=aid, rate_cents=rate, limit_s=900, outcome="accepted",
                   number=number, inmate=inmate, started_ms=end - int(bridged_s * 1000) - 20_000)
    assert store.reserve(aid, cid, rate * 15)
    records.update(store.r, cid, bridged_ms=end - int(bridged_s * 1000), ended_ms=end)
    if reason:
        records.set_reason(store.r, cid, reason)
    return cid


# --- ledger check --------------------------------------------------------------------

def test_ledger_check_passes_after_random_operations_and_names_a_tampered_account(store):
    rnd = random.Random(4)
    aids = [new_account(store, deposit=rnd.randint(1, 5000)) for _ in range(4)]
    for _ in range(150):
        aid = rnd.choice(aids)
        op = rnd.choice(["deposit", "credit", "refund", "call", "call", "open"])
        if op in ("deposit", "credit"):
            store.adjust(aid, op, rnd.randint(1, 3000))
        elif op == "refund":
            try:
                store.refund(aid, rnd.choice([None, rnd.randint(1, 2000)]), "r")
            except StoreError:
                pass
        else:
            cid = new_call()
            if store.reserve(aid, cid, rnd.randint(1, 1500)) and op == "call":
                store.settle(cid, aid, rnd.randint(0, 2000), 1, 11)
    doc = ledger.check(store.r)
    assert doc["ok"], doc["failed"]
    assert any(d["held_cents"] > 0 for d in doc["accounts"])  # open calls' holds were matched too

    victim = aids[2]
    store.r.hincrby(keys.account(victim), "balance_cents", 1)  # behind the ledger's back
    doc = ledger.check(store.r)
    assert not doc["ok"] and doc["failed"] == [victim]
    assert "!= ledger" in " ".join(next(d for d in doc["accounts"] if d["account"] == victim)["problems"])


def test_ledger_check_catches_a_held_mismatch_and_an_orphan_ledger(store):
    a, b = new_account(store, deposit=1000), new_account(store, deposit=1000)
    assert store.reserve(a, new_call(), 300)
    store.r.hincrby(keys.account(b), "held_cents", 50)  # no call holds it
    store.r.xadd(keys.ledger("ghost"), {"kind": "deposit", "amount_cents": 1, "balance_cents": 1})
    doc = ledger.check(store.r)
    assert doc["failed"] == [b, "ghost"]


def test_icsctl_ledger_check_exit_status_and_names(store, run):
    good, bad = new_account(store, deposit=700), new_account(store, deposit=700)
    status, out, _ = run("ledger", "check")
    assert status == 0 and "ledger check passed: 2 account(s)" in out
    store.r.hincrby(keys.account(bad), "balance_cents", -100)
    status, out, err = run("ledger", "check")
    assert status == 1 and err.count("\n") == 1 and bad in err and good not in err
    status, out, err = run("ledger", "check", "--json")
    doc = json.loads(out)
    assert status == 1 and doc["failed"] == [bad] and doc["ok"] is False


# --- refunds ---------------------------------------------------------------------------

def test_refund_partial_full_and_too_much(store, run):
    aid = new_account(store, deposit=1000)
    assert store.reserve(aid, new_call(), 300)  # 700 available
    status, out, _ = run("account", "refund", aid, "--amount", "2.50", "--note", "family asked")
    assert status == 0 and "refunded $2.50" in out and store.account(aid).balance_cents == 750
    status, _, err = run("account", "refund", aid, "--cents", "451")
    assert status == 1 and "exceeds the 450 cents available" in err
    status, out, _ = run("account", "refund", aid, "--all")
    assert status == 0 and "refunded $4.50" in out
    acct = store.account(aid)
    assert (acct.balance_cents, acct.held_cents) == (300, 300)  # the call's hold is untouched
    status, _, err = run("account", "refund", aid, "--all")
    assert status == 1 and "nothing available" in err
    assert [(e["kind"], e["amount_cents"]) for e in store.ledger(aid)] == [
        ("deposit", "1000"), ("refund", "250"), ("refund", "450")]
    assert store.ledger(aid)[1]["note"] == "family asked"
    assert run("account", "refund", aid, "--cents", "-5")[0] == 1
    assert run("account", "refund", "nobody", "--all")[0] == 1
    assert ledger.check(store.r)["ok"]


# --- expiry ----------------------------------------------------------------------------

def test_expiry_at_180_days_not_179_and_a_deposit_reactivates(store, run):
    aid = new_account(store, deposit=1234)
    t0 = int(store.ledger(aid)[-1]["ts"])  # the deposit: the last activity (never charged)
    assert store.expire_account(aid, t0 + 179 * DAY_MS + DAY_MS - 1)[0] == "active"
    status, out, _ = run("accounts", "expire", "--now-ms", str(t0 + 179 * DAY_MS), "--json")
    assert status == 0 and json.loads(out)["flagged"] == [] and store.account_usable(aid) is None
    assert json.loads(run("accounts", "refunds-due", "--json")[1])["refunds_due"] == []

    status, out, _ = run("accounts", "expire", "--now-ms", str(t0 + INACTIVITY_MS), "--json")
    assert status == 0 and [g["account"] for g in json.loads(out)["flagged"]] == [aid]
    assert store.account_usable(aid) == "account_expired"
    assert store.account_usable(store.account(aid)) == "account_expired"
    assert store.account(aid).balance_cents == 1234  # flagged, not taken
    doc = json.loads(run("accounts", "refunds-due", "--json")[1])
    assert doc["refunds_due"][0]["account"] == aid and doc["refunds_due"][0]["refund_due_cents"] == 1234
    assert doc["total_cents"] == 1234
    status, out, _ = run("accounts", "refunds-due")
    assert status == 0 and "$12.34" in out
    # idempotent: a second run flags nothing new and keeps the first expiry time
    expired_ms = store.account_fields(aid)["expired_ms"]
    doc = json.loads(run("accounts", "expire", "--now-ms", str(t0 + INACTIVITY_MS + DAY_MS), "--json")[1])
    assert doc["flagged"] == [] and [g["account"] for g in doc["expired"]] == [aid]
    assert store.account_fields(aid)["expired_ms"] == expired_ms

    store.adjust(aid, "deposit", 100, "back again")
    assert store.account_usable(aid) is None
    assert json.loads(run("accounts", "refunds-due", "--json")[1])["refunds_due"] == []
    assert store.expire_account(aid, t0 + INACTIVITY_MS)[0] == "active"  # the deposit is new activity
    assert ledger.check(store.r)["ok"]


def test_expiry_counts_from_the_last_paid_call_and_spares_live_calls(store):
    aid = new_account(store, deposit=5000)
    cid = new_call()
    assert store.reserve(aid, cid, 100)
    assert store.expire_account(aid, now_ms() + 2 * INACTIVITY_MS)[0] == "in_call"
    store.settle(cid, aid, 50, 2, 25)
    last_charge = int(store.ledger(aid)[-1]["ts"])
    store.adjust(aid, "credit", 10, "goodwill")  # not activity: only deposits and paid calls count
    assert store.expire_account(aid, last_charge + INACTIVITY_MS - 1) == ("active", last_charge)
    assert store.expire_account(aid, last_charge + INACTIVITY_MS) == ("flagged", last_charge)
    # disposal of unclaimed funds is the only way expired money leaves, ledgered as kind expiry
    other = new_account(store, deposit=10)
    with pytest.raises(StoreError, match="not expired"):
        store.dispose_expired(other, "unclaimed")
    assert store.dispose_expired(aid, "unclaimed, escheated") == (4960, 0)
    assert store.refunds_due() == [] and ledger.check(store.r)["ok"]


def test_a_never_funded_account_expires_from_creation(store):
    aid = new_account(store)
    created = int(store.account_fields(aid)["created_ms"])
    assert store.expire_account(aid, created + INACTIVITY_MS - 1)[0] == "active"
    assert store.expire_account(aid, created + INACTIVITY_MS)[0] == "flagged"
    assert store.refunds_due() == []  # nothing to give back


# --- automatic credit for system drops ---------------------------------------------------

def test_auto_credit_once_for_a_system_drop_in_the_first_minute(store):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=30, reason="system_error")
    rec = settlement.settle(store, cid)
    assert rec["billed_cents"] == 25 and rec["credited_cents"] == 25 and rec["credit_reason"]
    again = settlement.settle(store, cid)  # a duplicate hang-up: no second credit
    assert again["credited_cents"] == 25
    assert store.auto_credit(cid) == 0
    credits = [e for e in store.ledger(aid) if e["kind"] == "credit"]
    assert len(credits) == 1 and credits[0]["note"] == f"auto credit: system drop {cid}"
    assert credits[0]["call"] == cid and credits[0]["amount_cents"] == "25"
    assert store.account(aid).balance_cents == 1000 and ledger.check(store.r)["ok"]


@pytest.mark.parametrize("bridged_s,reason", [(61, "system_error"), (30, None), (30, "inmate_hangup")])
def test_no_auto_credit_after_a_minute_or_for_other_reasons(store, bridged_s, reason):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=bridged_s, reason=reason)
    rec = settlement.settle(store, cid)
    assert rec["billed_cents"] == rating.price(25, bridged_s * 1000).cents
    assert "credited_cents" not in rec
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit", "charge"]


def test_auto_credit_boundary_is_the_first_minute(store):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, bridged_s=AUTO_CREDIT_MS / 1000, reason="system_error")
    assert settlement.settle(store, cid)["credited_cents"] == 25


# --- statements ----------------------------------------------------------------------------

def month_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m")


def test_statement_csv_and_html_reconcile_and_list_the_calls(store, run, tmp_path):
    aid = new_account(store)
    # an older month: a deposit written with an explicit stream id in January 2020
    jan = int(datetime(2020, 1, 15, tzinfo=timezone.utc).timestamp() * 1000)
    store.r.xadd(keys.ledger(aid), {"kind": "deposit", "amount_cents": 2000, "balance_cents": 2000,
                                    "call": "", "note": "old", "ts": jan}, id=f"{jan}-0")
    store.r.hincrby(keys.account(aid), "balance_cents", 2000)
    store.adjust(aid, "deposit", 500, "top up")
    c1 = bridged_call(store, aid, rate=21, bridged_s=150, number="3125550100")
    settlement.settle(store, c1)
    store.r.hset(keys.call(c1), "tax_cents", 4)
    c2 = bridged_call(store, aid, rate=21, bridged_s=20, reason="system_error", number="3125550101")
    settlement.settle(store, c2)
    store.refund(aid, 100, "partial refund")
    month = month_of(now_ms())

    st = statements.build(store, aid, month)
    assert st.opening_cents == 2000
    assert st.closing_cents == store.account(aid).balance_cents == 2000 + 500 - 63 - 21 + 21 - 100
    assert [c.call_id for c in st.calls] == [c1, c2]
    assert st.calls[0].tax_cents == 4 and st.calls[1].credited_cents == 21

    csv_path, html_path = tmp_path / "s.csv", tmp_path / "s.html"
    status, out, _ = run("statement", aid, "--month", month, "--csv", str(csv_path))
    assert status == 0 and "2 call(s)" in out and "closing $23.37" in out
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["kind"] == "opening_balance" and rows[-1]["kind"] == "closing_balance"
    moved = sum(round(float(r["amount"]) * 100) for r in rows[1:-1])
    assert round(float(rows[0]["balance"]) * 100) + moved == round(float(rows[-1]["balance"]) * 100) == 2337
    calls = [r for r in rows if r["kind"] == "charge"]
    assert [(r["call_id"], r["number"], r["minutes"], r["rate_per_min"], r["charge"], r["tax"]) for r in calls] == [
        (c1, "3125550100", "3", "0.21", "0.63", "0.04"), (c2, "3125550101", "1", "0.21", "0.21", "0.00")]  # settle records the tax, 0 here
    assert calls[1]["credited"] == "0.21"

    assert run("statement", aid, "--month", month, "--html", str(html_path))[0] == 0
    page = html_path.read_text()
    assert "<script" not in page and "<style>" in page and "@media print" in page
    assert "3125550101" in page and "$20.00" in page and "$23.37" in page and "<link" not in page

    old = statements.build(store, aid, "2020-01")
    assert (old.opening_cents, old.closing_cents, old.calls) == (0, 2000, [])
    nothing = statements.build(store, aid, "2019-12")
    assert (nothing.opening_cents, nothing.closing_cents, nothing.lines) == (0, 0, [])


def test_statement_refused_when_it_does_not_reconcile(store, run, tmp_path):
    aid = new_account(store, deposit=1000)
    month = month_of(now_ms())
    store.r.hincrby(keys.account(aid), "balance_cents", 5)
    status, _, err = run("statement", aid, "--month", month, "--csv", str(tmp_path / "x.csv"))
    assert status == 1 and "refused" in err and not (tmp_path / "x.csv").exists()
    store.adjust(aid, "deposit", 10)  # the entry now records a balance the ledger cannot explain
    with pytest.raises(statements.StatementError, match="refused"):
        statements.build(store, aid, month)
    assert run("statement", aid, "--month", "2026-13", "--csv", str(tmp_path / "y.csv"))[0] == 1
    assert run("statement", "nobody", "--month", month, "--csv", str(tmp_path / "y.csv"))[0] == 1


# --- concurrency ----------------------------------------------------------------------------

def test_100_concurrent_calls_drain_one_prepaid_account(store):
    deposit = 3_000
    aid = new_account(store, deposit=deposit)
    rate = 7
    start = threading.Barrier(100)

    def one_call(i: int) -> int:
        rnd = random.Random(i)
        cid = f"20261101000000-{i:08x}"
        start.wait()
        limit_min = rnd.randint(1, 10)
        if not store.reserve(aid, cid, rate * limit_min):
            return 0
        duration = rnd.randint(0, limit_min * 60_000 + 5_000)  # may run a little past the limit
        bill = rating.price(rate, duration)
        first, cents, _ = store.settle(cid, aid, bill.cents, bill.minutes, rate)
        assert first and cents <= rate * limit_min
        return cents

    with ThreadPoolExecutor(max_workers=100) as pool:
        charged = sum(pool.map(one_call, range(100)))
    acct = store.account(aid)
    assert acct.balance_cents >= 0 and acct.held_cents == 0
    charges = sum(int(e["amount_cents"]) for e in store.ledger(aid) if e["kind"] == "charge")
    assert charges == charged == deposit - acct.balance_cents
    assert ledger.check(store.r)["ok"]


def test_an_expired_account_refuses_the_hold_atomically_until_a_deposit(store):
    """The expiry check is part of the hold script (no check-then-hold race): a flagged
    account holds nothing, whatever its balance; a deposit reactivates it."""
    aid = new_account(store, deposit=5000)
    t0 = int(store.ledger(aid)[-1]["ts"])
    assert store.expire_account(aid, t0 + INACTIVITY_MS)[0] == "flagged"
    cid = new_call()
    with pytest.raises(AccountExpired):
        store.reserve(aid, cid, 100, minutes=1)
    assert store.account(aid).held_cents == 0 and store.r.hget(keys.call(cid), "held_cents") is None
    store.adjust(aid, "deposit", 100, "back again")
    assert store.reserve(aid, cid, 100, minutes=1)
    store.settle(cid, aid, 100, 1, 100)
    assert ledger.check(store.r)["ok"]
