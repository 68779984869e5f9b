"""Calls that end while part of the system is down or dying (issue 8, items 2-4).

- Redis killed mid-call, the call hangs up while it is down: settled within a
  few seconds of Redis returning, dated from the AMI Hangup event, once.
- The listener killed after the bridge: the called leg's TIMEOUT(absolute)
  backstop ends the call about rating.BACKSTOP_MS after the paid minute, billed
  exactly that minute, reason time_limit with a threshold naming the backstop.
- FastAGI stalled (SIGSTOP) as the called party hangs up: the settle AGI runs seconds late,
  but the bill ends when the bridge did (the hangup handler's stamp, Asterisk's clock).
- Asterisk restarted mid-call: the record says system_error with the evidence
  (Asterisk's SoftHangupRequest with the shutdown cause, the AMI Shutdown event),
  is credited per the rule
  (a system drop within the first bridged minute: in full, once).
Like every e2e test, each fails on an ERROR or WARNING line in Asterisk's log
(tests/conftest.py ASTERISK_LOG_ALLOWED lists the lines a deliberate restart makes).
"""

import json
import os
import signal
import time

import pytest

from ami.rules import event_ms
from ics import ledger, rating, records, settlement
from ics.rating import MINUTE_MS

from tests.e2e.test_billing_calls import accept, charges  # noqa: F401
from tests.e2e.test_collect_call import lines  # noqa: F401 (fixture)
from tests.support import services, stack_setting
from tests.support.callflow import INMATE, balance, latest_call, make_world, wait_settled  # noqa: F401

pytestmark = pytest.mark.e2e


def wait_credited(world, call_id, timeout: float = 5) -> dict:
    """The call record once its system-drop credit is written. The hangup handler may settle the
    call as a plain hang-up first; the listener then records the drop and settlement credits it
    a moment later (once)."""
    deadline = time.time() + timeout
    while True:
        rec = records.get(world.store.r, call_id) or {}
        if "credited_cents" in rec or time.time() > deadline:
            return rec
        time.sleep(0.05)


def credits(world, call_id):
    return [e for e in world.store.ledger(world.account) if e["kind"] == "credit" and e["call"] == call_id]


def inmate_hangup(ami, mark, channel: str, timeout=10):
    """The Hangup of this call's own inmate channel (an earlier call's channel of the same phone
    can still hang up after the mark under load)."""
    return ami.wait_for(lambda e: e.get("Event") == "Hangup" and e.get("Channel") == channel, timeout, since=mark)


def test_call_ended_while_redis_was_down_is_settled_when_it_returns(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    mark = ami.mark()
    call, callee = accept(ami, inmate, family)
    call_id, channel = latest_call(world)["call_id"], latest_call(world)["channel"]
    time.sleep(1.5)  # appendfsync everysec: the bridge's writes reach the disk first
    services.kill("redis")
    try:
        time.sleep(0.5)
        callee.hangup()
        call.wait_disconnected(10)
        hung_up = event_ms(inmate_hangup(ami, mark, channel))
        time.sleep(3)
    finally:
        services.restart("redis")
    back = time.monotonic()
    rec = wait_settled(world, timeout=10)
    settled_after = time.monotonic() - back
    assert rec["call_id"] == call_id
    assert settled_after < 5, f"settled {settled_after:.1f}s after Redis returned"
    assert rec["ended_ms"] == hung_up, "dated from the AMI Hangup event, not the settling"
    assert (rec["reason"], rec["billed_minutes"], rec["billed_cents"]) == ("called_hangup", 1, 11)
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert balance(world) == 500 - 11 and world.store.account(world.account).held_cents == 0
    assert ledger.check(world.store.r)["ok"]
    assert services.log_events("ami", "ami.settle_retry", call_id)


def test_listener_down_the_backstop_ends_the_call_after_the_paid_minute(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    # rules that would need the listener are moot; the phones send silence
    world = make_world(balance_cents=500, rule_silence=False)
    call, callee = accept(ami, inmate, family)
    t0 = time.monotonic()
    call_id = latest_call(world)["call_id"]
    services.kill("ami")
    try:
        limit = (MINUTE_MS + rating.BACKSTOP_MS) / 1000
        while not call.disconnected and time.monotonic() - t0 < limit + 12:  # both stay on the line
            time.sleep(0.25)
        ended_after = time.monotonic() - t0
        assert call.disconnected, f"still up {ended_after:.0f}s after the bridge: the backstop did not fire"
        callee.wait_disconnected(5)
        rec = wait_settled(world)
    finally:
        services.restart("ami")
    assert limit - 3 <= ended_after <= limit + 2, f"ended {ended_after:.1f}s after the bridge, backstop {limit}s"
    assert rec["call_id"] == call_id
    assert rec["reason"] == "time_limit", rec
    assert rec["rule_threshold"].startswith("backstop"), rec
    assert "paid_minutes=1" in rec["rule_threshold"]
    assert (rec["billed_minutes"], rec["billed_cents"], rec["paid_minutes"]) == (1, 11, 1)
    assert MINUTE_MS + rating.BACKSTOP_MS - 3000 <= rec["ended_ms"] - rec["bridged_ms"] <= MINUTE_MS + 10_000
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert balance(world) == 500 - 11 and world.store.account(world.account).held_cents == 0
    assert ledger.check(world.store.r)["ok"]


def test_asterisk_restart_mid_call_is_a_credited_system_error(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    call_id = latest_call(world)["call_id"]
    time.sleep(3)
    restarted_at = int(time.time() * 1000)
    services.asterisk_cli("core restart now")
    try:
        services.wait_asterisk_booted()
    finally:
        ami.reconnect()
    # Asterisk dropped the channels without a BYE: the phones hang up on their own
    call.hangup()
    callee.hangup()
    rec = wait_settled(world, timeout=20)
    assert rec["call_id"] == call_id
    assert rec["reason"] == "system_error", rec
    # Asterisk hangs every channel up (SoftHangupRequest, Cause 4: shutdown), runs the hangup
    # handlers (which can only see a normal clearing), then sends Shutdown and closes AMI
    evidence = json.loads(rec["evidence"])
    assert [e["event"] for e in evidence] == ["SoftHangupRequest", "Shutdown"], evidence
    assert evidence[0]["Cause"] == "4" and evidence[1]["Restart"] == "True"
    assert rec["rule_threshold"] == "asterisk_shutdown"
    assert rec["ended_ms"] - restarted_at < 2000 and rec["ended_ms"] >= rec["bridged_ms"]
    # billed for what was bridged, then credited in full, once
    rec = wait_credited(world, call_id)
    assert (rec["billed_minutes"], rec["billed_cents"], rec["credited_cents"]) == (1, 11, 11)
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert [int(e["amount_cents"]) for e in credits(world, call_id)] == [11]
    assert settlement.settle(world.store, call_id)["credited_cents"] == 11  # a late duplicate: nothing more
    assert len(credits(world, call_id)) == 1
    assert balance(world) == 500 and world.store.account(world.account).held_cents == 0
    assert ledger.check(world.store.r)["ok"]
    assert len(services.log_events("ami", "call.settled", call_id)
               + services.log_events("fastagi", "call.settled", call_id)) == 1


def test_asterisk_killed_mid_call_is_a_credited_system_error_dated_at_the_loss(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    call_id = latest_call(world)["call_id"]
    time.sleep(3)
    killed_at = int(time.time() * 1000)
    services.kill("asterisk")  # no hangup handler, no Shutdown event: the listener just loses AMI
    try:
        services.restart("asterisk")
    finally:
        ami.reconnect()
    call.hangup()
    callee.hangup()
    rec = wait_settled(world, timeout=20)
    assert rec["call_id"] == call_id
    assert rec["reason"] == "system_error" and rec["rule_threshold"] == "asterisk_restart", rec
    assert [e["event"] for e in json.loads(rec["evidence"])] == ["AMIConnectionLost", "CoreStatus"]
    assert 0 <= rec["ended_ms"] - killed_at < 2000, "dated when AMI was lost, not when it came back"
    rec = wait_credited(world, call_id)
    assert (rec["billed_minutes"], rec["billed_cents"], rec["credited_cents"]) == (1, 11, 11)
    assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
    assert [int(e["amount_cents"]) for e in credits(world, call_id)] == [11]
    assert balance(world) == 500 and world.store.account(world.account).held_cents == 0
    assert ledger.check(world.store.r)["ok"]
    assert services.log_events("ami", "ami.system_drop", call_id)
    assert not services.log_events("fastagi", "call.settled", call_id)


def test_a_trunk_failure_cause_on_the_called_leg_is_a_credited_system_error(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    call_id = latest_call(world)["call_id"]
    time.sleep(2)
    # what a carrier sends when its network fails mid-call (RFC 3326 Reason, Q.850 38)
    callee.hangup(headers={"Reason": "Q.850;cause=38"})
    call.wait_disconnected(10)
    assert wait_settled(world)["call_id"] == call_id
    # the hangup handler may settle it as a plain hang-up first: the listener's drop follows
    rec = wait_credited(world, call_id)
    assert (rec["reason"], rec.get("rule_threshold")) == ("system_error", "hangupcause=38"), rec
    assert json.loads(rec["evidence"])[0]["Cause"] == "38"
    assert (rec["billed_cents"], rec["credited_cents"]) == (11, 11)
    assert balance(world) == 500 and ledger.check(world.store.r)["ok"]


def test_a_normal_hangup_cause_stays_a_plain_hangup(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    time.sleep(1)
    callee.hangup(headers={"Reason": "Q.850;cause=16"})
    call.wait_disconnected(10)
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup" and "credited_cents" not in rec
    assert balance(world) == 500 - 11


def test_a_stalled_fastagi_at_hangup_does_not_stretch_the_bill(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    mark = ami.mark()
    call, callee = accept(ami, inmate, family)
    time.sleep(1)
    fastagi = services.pid("fastagi")
    os.kill(fastagi, signal.SIGSTOP)  # the settle AGI connects, then waits
    try:
        callee.hangup()
        left = event_ms(ami.wait_for({"Event": "BridgeLeave"}, 10, since=mark))
        time.sleep(3)
        assert latest_call(world).get("settled") != "1", "settled while FastAGI was stopped"
    finally:
        os.kill(fastagi, signal.SIGCONT)
    rec = wait_settled(world, timeout=10)
    assert abs(rec["ended_ms"] - left) < 250, f"the bill ends {rec['ended_ms'] - left} ms after the bridge did"
    assert (rec["reason"], rec["billed_minutes"], rec["billed_cents"]) == ("called_hangup", 1, 11)
    assert ledger.check(world.store.r)["ok"]
