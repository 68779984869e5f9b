"""Money on real calls: real Asterisk 22, Redis, the FastAGI server, the AMI listener, pjsua2 phones.

- A call whose second minute cannot be held (the funds left meanwhile) is warned
  and cut by the listener at the end of the paid minute: billed exactly that
  minute, the balance ends at 0 and never goes below.
- The process that settles is killed with SIGKILL mid-call and restarted: the
  call is still settled exactly once (one charge, the right amount, no hold
  left). FastAGI dead: the listener's safety net settles it. Listener dead: the
  hangup handler settles it and the restarted listener does not do it again.
"""

import time

import pytest

from ics import ledger, settlement

from tests.e2e.test_collect_call import answer, lines, start_call  # noqa: F401 (fixture)
from tests.support import services
from tests.support.callflow import NUMBER, balance, latest_call, make_world, press_when, wait_settled

pytestmark = pytest.mark.e2e

RATE = 13  # cents/min: the e2e facility is a jail of ADP 200, capped at 13


def bridged(ami, mark, timeout=15):
    return ami.wait_for(lambda e: e.get("Event") == "BridgeEnter"
                        and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"), timeout, since=mark)


def accept(ami, inmate, family):
    call, mark = start_call(ami, inmate, family)
    callee = answer(ami, family, mark)
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{NUMBER}")
    bridged(ami, mark)
    return call, callee


def charges(world, call_id):
    return [e for e in world.store.ledger(world.account) if e["kind"] == "charge" and e["call"] == call_id]


def assert_money_consistent(world):
    doc = ledger.check(world.store.r)
    assert doc["ok"], doc
    assert all(int(e["balance_cents"]) >= 0 for e in world.store.ledger(world.account))


def test_call_cut_at_zero_balance_bills_exactly_the_paid_minute(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    # two minutes' funds; the silence rule is off (the phones send pure silence)
    world = make_world(balance_cents=2 * RATE, rate_cents_per_min=RATE, rule_silence=False)
    mark = ami.mark()
    call, callee = accept(ami, inmate, family)
    t0 = time.monotonic()
    rec = latest_call(world)
    assert (rec["limit_s"], rec["held_cents"], rec["paid_minutes"]) == (120, RATE, 1)
    # the family spends the rest meanwhile (a refund here; another call would do the same):
    # the second minute can no longer be held
    world.store.refund(world.account, RATE, "e2e: funds leave while the call is live")
    lowest = RATE
    while not call.disconnected and time.monotonic() - t0 < 75:  # both stay on the line
        acct = world.store.account(world.account)
        lowest = min(lowest, acct.balance_cents, acct.balance_cents - acct.held_cents)
        time.sleep(0.5)
    cut_after = time.monotonic() - t0
    call.wait_disconnected(5)
    callee.wait_disconnected(5)
    assert 58 <= cut_after <= 66, f"cut after {cut_after:.1f}s, the paid minute is 60s"
    # warned before the end of the paid minute, with the seconds really left
    said = ami.wait_for({"Event": "Newexten", "Context": "ics-notice", "Application": "SayNumber"}, 1, since=mark)
    assert 5 <= int(said["AppData"]) <= 12
    rec = wait_settled(world)
    assert rec["reason"] == "time_limit" and rec["rule_threshold"].startswith("paid_minutes=1")
    assert (rec["billed_minutes"], rec["billed_cents"], rec["paid_minutes"]) == (1, RATE, 1)
    assert rec["cut_ms"] - rec["bridged_ms"] == 60_000
    acct = world.store.account(world.account)
    assert (acct.balance_cents, acct.held_cents) == (0, 0)
    assert lowest >= 0
    assert [int(e["amount_cents"]) for e in charges(world, rec["call_id"])] == [RATE]
    assert_money_consistent(world)


def test_fastagi_killed_mid_call_the_listener_settles_it_once(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    call_id = latest_call(world)["call_id"]
    killed = services.kill("fastagi")
    try:
        time.sleep(2)
        callee.hangup()
        call.wait_disconnected(10)
        # the hangup handler cannot reach the FastAGI server: the listener's sweep settles
        rec = wait_settled(world, timeout=20)
    finally:
        restarted = services.restart("fastagi")
    assert restarted != killed
    assert services.log_events("ami", "ami.settle_sweep", call_id)
    assert not services.log_events("fastagi", "call.settled", call_id)
    # a few bridged seconds: one minute at the default 11 cents
    assert (rec["call_id"], rec["billed_minutes"], rec["billed_cents"]) == (call_id, 1, 11)
    # a late duplicate (a restarted process seeing the hang-up again) changes nothing
    assert settlement.settle(world.store, call_id)["billed_cents"] == 11
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert balance(world) == 500 - 11 and world.store.account(world.account).held_cents == 0
    assert_money_consistent(world)


def test_listener_killed_mid_call_the_hangup_handler_settles_it_once(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    call_id = latest_call(world)["call_id"]
    killed = services.kill("ami")
    try:
        time.sleep(2)
        call.hangup()
        callee.wait_disconnected(10)
        rec = wait_settled(world)
    finally:
        restarted = services.restart("ami")
    assert restarted != killed
    assert services.log_events("fastagi", "call.settled", call_id)
    assert not services.log_events("ami", "ami.settle_sweep", call_id)
    assert (rec["reason"], rec["billed_minutes"], rec["billed_cents"]) == ("inmate_hangup", 1, 11)
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert balance(world) == 500 - 11 and world.store.account(world.account).held_cents == 0
    assert_money_consistent(world)

