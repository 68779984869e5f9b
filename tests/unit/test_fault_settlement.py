"""Fault paths of settlement (issue 8, items 2-4), on a real Redis:

- the AMI listener keeps a hang-up it could not settle (Redis away) and settles it,
  dated by the AMI event, once Redis answers; its periodic scan finds calls that
  ended while nothing could settle them;
- `ledger check` fails on a stale hold (a call that ended still holding money);
- the backstop's end is time_limit with a threshold naming it, and a hang-up past
  every backstop keeps the party's reason;
- system drops (a network-failure hang-up cause, Asterisk shutting down, Asterisk
  restarted while AMI was lost) are system_error with evidence, credited once
  whatever the order of settlement and the drop's record.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from ami.listener import Listener
from ami.rules import LiveCall
from ics import keys, ledger, rating, records, settlement
from ics.rating import MINUTE_MS
from ics.store import Store, now_ms
from tests.unit.test_ledger_money import bridged_call, new_account


class StubManager:
    """What Listener needs of ami.connection.GuardedManager, without a socket."""

    def __init__(self, startup="2026-11-29 17:00:00"):
        self.login_hooks, self.disconnect_hooks, self.events = [], [], []
        self.connected_event = asyncio.Event()
        self.connected_event.set()
        self.startup = startup
        self.sent = []

    def register_event(self, name, cb):
        self.events.append(name)

    def send_action(self, action):
        self.sent.append(action)
        fut = asyncio.get_running_loop().create_future()
        if action["Action"] == "CoreStatus":
            date, _, tm = self.startup.partition(" ")
            fut.set_result({"Response": "Success", "CoreStartupDate": date, "CoreStartupTime": tm})
        elif action["Action"] == "CoreShowChannels":
            fut.set_result([])
        else:
            fut.set_result({"Response": "Success"})
        return fut


def dead_store(store: Store) -> Store:
    """The same Store, but Redis does not answer (nothing listens on port 1)."""
    return Store(redis.Redis(host="127.0.0.1", port=1, decode_responses=True, socket_connect_timeout=0.2),
                 store.cfg)


def listener(store: Store, **ami) -> Listener:
    cfg = store.cfg
    cfg.values["ami"].update({"settle_retry_ms": 50, "orphan_scan_s": 3600, **ami})
    return Listener(cfg, store, StubManager())


# --- item 2: a hang-up while Redis is down -------------------------------------------------

async def test_a_hangup_while_redis_is_down_is_settled_when_it_returns_dated_by_the_event(store, monkeypatch):
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=30)
    store.r.hdel(keys.call(cid), "ended_ms")  # nothing recorded the end: Redis was down
    hung_up = now_ms() - 10_000
    lis = listener(store)
    lis.store = dead_store(store)
    await lis.sweep(cid, hung_up)
    assert cid in lis.unsettled and lis.unsettled[cid].ended_ms == hung_up
    await lis.retry_unsettled()  # still down: kept
    assert lis.unsettled[cid].attempts == 2 and records.get(store.r, cid).get("settled") is None
    lis.store = store  # Redis is back
    await lis.retry_unsettled()
    rec = records.get(store.r, cid)
    assert rec["settled"] == "1" and rec["ended_ms"] == hung_up and not lis.unsettled
    assert (rec["billed_cents"], rec["reason"]) == (rating.price(25, 20_000).cents, "called_hangup")
    await lis.retry_unsettled()  # nothing left to do, nothing done twice
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit", "charge"]
    assert ledger.check(store.r)["ok"]


async def test_retrying_is_bounded_and_logged(store, monkeypatch, capsys):
    lis = listener(store, settle_retry_max_s=0)
    lis.store = dead_store(store)
    await lis.sweep("20261101120000-deadbeef", 1_000)
    assert lis.unsettled
    await asyncio.sleep(0.01)
    await lis.retry_unsettled()
    assert not lis.unsettled
    out = capsys.readouterr()
    assert "ami.settle_retry" in out.out + out.err and "ami.settle_gave_up" in out.out + out.err


async def test_the_periodic_orphan_scan_settles_calls_nobody_saw_end(store, monkeypatch):
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 0)
    aid = new_account(store, deposit=1000)
    gone, live = bridged_call(store, aid), bridged_call(store, aid)
    records.update(store.r, gone, uniqueid="1.1")
    records.update(store.r, live, uniqueid="2.1")
    lis = listener(store, orphan_scan_s=0)
    await lis.scan_orphans()  # live calls not rebuilt yet: nothing is trusted, nothing settled
    assert records.get(store.r, gone).get("settled") is None
    lis.rebuilt = True
    lis.calls["2.1"] = LiveCall("2.1")
    task = asyncio.get_running_loop().create_task(lis.upkeep())
    try:
        for _ in range(100):
            if records.get(store.r, gone).get("settled") == "1":
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert records.get(store.r, gone)["settled"] == "1"
    assert records.get(store.r, live).get("settled") is None


# --- ledger check: stale holds -------------------------------------------------------------

def test_ledger_check_fails_on_a_stale_hold_and_passes_otherwise(store):
    aid = new_account(store, deposit=1000)
    live = f"20261101120000-{1:08x}"
    assert store.reserve(aid, live, 25)            # a live call's hold: fine
    just_ended = bridged_call(store, aid)          # ended a moment ago, being settled: fine
    assert ledger.check(store.r)["ok"]
    stale = bridged_call(store, aid)
    records.update(store.r, stale, ended_ms=now_ms() - ledger.STALE_HOLD_GRACE_MS - 5_000)
    doc = ledger.check(store.r)
    assert not doc["ok"] and doc["failed"] == [aid]
    problems = " ".join(next(d for d in doc["accounts"] if d["account"] == aid)["problems"])
    assert "stale hold" in problems and stale in problems and just_ended not in problems
    settlement.settle(store, stale)
    settlement.settle(store, just_ended)
    assert ledger.check(store.r)["ok"]


# --- item 3: the backstop's end ---------------------------------------------------------------

def test_an_unwatched_call_ended_by_the_backstop_is_time_limit_naming_it(store):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=(MINUTE_MS + rating.BACKSTOP_MS + 400) / 1000)
    records.update(store.r, cid, paid_minutes=1)
    rec = settlement.settle(store, cid)
    assert rec["reason"] == "time_limit" and rec["rule"] == "time_limit"
    assert rec["rule_threshold"] == "backstop paid_minutes=1 +8s"
    assert rec["cut_ms"] - rec["bridged_ms"] == MINUTE_MS
    assert (rec["billed_minutes"], rec["billed_cents"]) == (1, 25)


def test_a_hangup_long_past_every_backstop_keeps_the_partys_reason(store):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=85)
    records.update(store.r, cid, paid_minutes=1)
    rec = settlement.settle(store, cid)
    assert rec["reason"] == "called_hangup" and "rule" not in rec
    assert (rec["billed_minutes"], rec["billed_cents"]) == (1, 25)  # never past the minutes held


@pytest.mark.parametrize("hungup_by, reason", [("inmate", "inmate_hangup_before_accept"),
                                                ("called", "called_hangup_before_accept")])
def test_a_hangup_after_accept_before_the_bridge_is_before_accept_unbilled(store, hungup_by, reason):
    """The called party pressed accept (outcome accepted: the rest of the recording notice
    plays before the bridge) and a party hung up then: never bridged, nothing billed."""
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=5)
    store.r.hdel(f"ics:call:{cid}", "bridged_ms", "ended_ms")
    records.update(store.r, cid, outcome="accepted", paid_minutes=1)
    inmate = "PJSIP/inmate1-1"
    rec = settlement.settle(store, cid, "", inmate if hungup_by == "inmate" else "PJSIP/3125550100-2", inmate)
    assert rec["reason"] == reason and rec["billed_cents"] == 0
    assert store.account(aid).held_cents == 0 and ledger.check(store.r)["ok"]


async def test_a_call_rebuilt_after_a_restart_is_not_cut_for_silence_it_never_saw(store):
    """Restarted mid-conversation (pauses under TALK_DETECT's threshold: no talk event comes),
    the listener counts both legs as talking until one of them stops."""
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=5)
    store.r.hdel(keys.call(cid), "ended_ms")
    lis = listener(store)
    rows = [{"Event": "CoreShowChannel", "Linkedid": "5.1", "Uniqueid": uid, "Channel": chan,
             "BridgeId": "b1", "ChanVariable": f"ICS_CALL_ID={cid}"}
            for uid, chan in (("5.1", "PJSIP/inmate1-1"), ("5.2", "PJSIP/3125550100-2"))]
    real_send = lis.manager.send_action

    def send(action):
        if action["Action"] != "CoreShowChannels":
            return real_send(action)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(rows)
        return fut
    lis.manager.send_action = send
    await lis.rebuild()
    call = lis.calls["5.1"]
    assert call.bridged and call.talking == {"PJSIP/inmate1-1", "PJSIP/3125550100-2"}
    later = call.quiet_since + call.policy.silence_s + 1
    assert call.tick(now=later)[0] is None
    for chan in ("PJSIP/inmate1-1", "PJSIP/3125550100-2"):  # both stop talking: the rule applies again
        call.observe({"Event": "ChannelTalkingStop", "Channel": chan, "Linkedid": "5.1"}, now=later)
    cut, _ = call.tick(now=later + call.policy.silence_s + 1)
    assert cut is not None and cut.reason == "silence"


@pytest.mark.parametrize("first, reason", [("PJSIP/inmate1-1", "inmate_hangup"),
                                           ("PJSIP/3125550100-2", "called_hangup")])
async def test_the_listener_settles_with_who_hung_up_first(store, monkeypatch, first, reason):
    """FastAGI down at hang-up: the listener's sweep says who ended the call (the first leg whose
    hang-up it saw), as the hangup handler would have."""
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0.01)
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=5)
    store.r.hdel(keys.call(cid), "ended_ms")
    lis = listener(store)
    call = lis.calls["6.1"] = LiveCall("6.1")
    call.call_id, call.inmate = cid, "PJSIP/inmate1-1"
    call.channels = {"PJSIP/inmate1-1": "6.1", "PJSIP/3125550100-2": "6.2"}
    t = now_ms()
    lis.on_hanguprequest({"Event": "HangupRequest", "Channel": first, "Linkedid": "6.1",
                          "Timestamp": f"{t / 1000:.6f}"})
    for chan in sorted(call.channels, key=lambda c: c != first):
        lis.on_hangup({"Event": "Hangup", "Channel": chan, "Linkedid": "6.1", "Cause": "16",
                       "Timestamp": f"{(t + 20) / 1000:.6f}"})
    while lis._tasks:
        await asyncio.sleep(0.01)
    rec = records.get(store.r, cid)
    assert rec["reason"] == reason and rec["billed_cents"] == 25


# --- item 4: system drops -----------------------------------------------------------------------

@pytest.mark.parametrize("cause", ["27", "34", "38", "41", "42", "47"])
def test_a_network_failure_cause_is_a_credited_system_error(store, cause):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    rec = settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", cause)
    assert rec["reason"] == "system_error" and rec["rule_threshold"] == f"hangupcause={cause}"
    assert json.loads(rec["evidence"])[0]["Cause"] == cause
    assert (rec["billed_cents"], rec["credited_cents"]) == (25, 25)
    assert store.account(aid).balance_cents == 1000 and ledger.check(store.r)["ok"]


@pytest.mark.parametrize("cause", ["16", "17", "0", ""])
def test_ordinary_causes_are_plain_hangups(store, cause):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    rec = settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", cause)
    assert rec["reason"] == "called_hangup" and "credited_cents" not in rec


@pytest.mark.parametrize("settled_first", [True, False])
async def test_a_shutdown_drop_is_credited_once_whatever_the_order(store, settled_first):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    if settled_first:  # the hangup handler ran first and could only say called_hangup
        assert settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16")["reason"] == "called_hangup"
    lis = listener(store)
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.bridged = cid, True
    t = now_ms() / 1000
    lis.on_softhanguprequest({"Event": "SoftHangupRequest", "Channel": "PJSIP/inmate1-1", "Linkedid": "9.1",
                              "Uniqueid": "9.1", "Cause": "4", "Timestamp": f"{t:.6f}"})
    lis.on_softhanguprequest({"Event": "SoftHangupRequest", "Channel": "PJSIP/inmate1-1", "Linkedid": "9.1",
                              "Uniqueid": "9.1", "Cause": "4", "Timestamp": f"{t + 0.001:.6f}"})
    lis.on_shutdown({"Event": "Shutdown", "Shutdown": "Cleanly", "Restart": "True", "Timestamp": f"{t + 1:.6f}"})
    while lis._tasks:
        await asyncio.sleep(0.01)
    if not settled_first:  # the hangup handler's settlement comes after the listener's record
        settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16")
    rec = records.get(store.r, cid)
    assert rec["reason"] == "system_error" and rec["rule_threshold"] == "asterisk_shutdown"
    assert [e["event"] for e in json.loads(rec["evidence"])] == ["SoftHangupRequest", "Shutdown"]
    assert (rec["billed_cents"], rec["credited_cents"]) == (25, 25)
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit", "charge", "credit"]
    assert store.account(aid).balance_cents == 1000 and ledger.check(store.r)["ok"]


async def test_other_softhangups_are_not_drops(store):
    lis = listener(store)
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.bridged = "20261101120000-0000abcd", True
    for cause in ("1", "8", "16", "32"):
        lis.on_softhanguprequest({"Event": "SoftHangupRequest", "Linkedid": "9.1", "Cause": cause})
    assert not lis._tasks and not lis.dropped


async def test_calls_gone_after_asterisk_restarted_while_ami_was_lost_are_system_drops(store, monkeypatch):
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    store.r.hdel(keys.call(cid), "ended_ms")
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 10**12)  # only the call under test
    lis = listener(store)
    await lis.rebuild()  # the first login: Asterisk's start time noted
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.bridged = cid, True
    lis.on_ami_lost()   # kill -9: no Shutdown event, the connection just goes
    lost_at = lis.ami_lost[0]
    lis.manager.startup = "2026-11-29 17:05:00"  # a new Asterisk
    await lis.rebuild()
    while lis._tasks:
        await asyncio.sleep(0.01)
    rec = records.get(store.r, cid)
    assert rec["reason"] == "system_error" and rec["rule_threshold"] == "asterisk_restart"
    assert rec["ended_ms"] == lost_at
    assert [e["event"] for e in json.loads(rec["evidence"])] == ["AMIConnectionLost", "CoreStatus"]
    assert rec["credited_cents"] == 25 and ledger.check(store.r)["ok"]


async def test_a_reconnect_that_drops_before_corestatus_keeps_the_restart_evidence(store, monkeypatch):
    """Asterisk restarting drops AMI again right after the first login (seen in a fault run): its
    CoreStatus never answered. That rebuild settles nothing; the next login's rebuild still knows
    AMI was lost with the call live, reads the new start time and records a system drop."""
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    store.r.hdel(keys.call(cid), "ended_ms")
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 10**12)
    lis = listener(store)
    await lis.rebuild()
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.bridged = cid, True
    lis.on_ami_lost()
    lost_at = lis.ami_lost[0]
    lis.manager.startup = "2026-11-29 17:05:00"
    answer = lis.manager.send_action

    def dropped(action):  # the reconnect's CoreStatus fails as GuardedManager fails it
        if action["Action"] != "CoreStatus":
            return answer(action)
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(ConnectionError("AMI connection lost; action not re-sent"))
        return fut
    lis.manager.send_action = dropped
    await lis.rebuild()
    while lis._tasks:
        await asyncio.sleep(0.01)
    assert records.get(store.r, cid).get("settled") != "1" and not lis.rebuilt
    lis.manager.send_action = answer   # the next login: Asterisk answers
    await lis.rebuild()
    while lis._tasks:
        await asyncio.sleep(0.01)
    rec = records.get(store.r, cid)
    assert rec["reason"] == "system_error" and rec["rule_threshold"] == "asterisk_restart"
    assert rec["ended_ms"] == lost_at and lis.rebuilt


async def test_calls_gone_after_an_ami_blip_are_plain_sweeps(store, monkeypatch):
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 10**12)
    lis = listener(store)
    await lis.rebuild()
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.bridged = cid, True
    lis.on_ami_lost()   # the same Asterisk afterwards: the call simply ended meanwhile
    await lis.rebuild()
    while lis._tasks:
        await asyncio.sleep(0.01)
    rec = records.get(store.r, cid)
    assert rec["reason"] == "called_hangup" and "credited_cents" not in rec


async def test_a_called_leg_hung_up_by_a_failing_network_is_a_system_drop(store):
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    # the hangup handler settled first: it saw only the inmate channel's own cause (16)
    assert settlement.settle(store, cid, "ANSWER", "PJSIP/3125550100-2", "PJSIP/inmate1-1", "16")["reason"] \
        == "called_hangup"
    lis = listener(store)
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.bridged = cid, True
    call.channels = {"PJSIP/inmate1-1": "9.1", "PJSIP/3125550100-2": "9.2"}
    lis.on_hangup({"Event": "Hangup", "Channel": "PJSIP/3125550100-2", "Linkedid": "9.1", "Uniqueid": "9.2",
                   "Cause": "38", "Cause-txt": "Network out of order", "Timestamp": f"{now_ms() / 1000:.6f}"})
    while lis._tasks:
        await asyncio.sleep(0.01)
    rec = records.get(store.r, cid)
    assert (rec["reason"], rec["rule_threshold"]) == ("system_error", "hangupcause=38")
    assert json.loads(rec["evidence"])[0] | {"time": ""} == {
        "event": "Hangup", "time": "", "channel": "PJSIP/3125550100-2", "Cause": "38",
        "Cause-txt": "Network out of order"}
    assert (rec["billed_cents"], rec["credited_cents"]) == (25, 25) and ledger.check(store.r)["ok"]


# --- menu faults: the called-party menu ended abnormally (ICS_FAULT=menu) ------------------------

def menu_fault_call(store: Store, aid: str, *, bridged: bool = False) -> str:
    """A call whose called party was in the announcement / menu (announcing, first minute held)
    when its flow died; bridged: the flow had even written bridged_ms (never bridged by Asterisk:
    the gosub's fault branch says CONTINUE)."""
    cid = bridged_call(store, aid, rate=25, bridged_s=5)
    records.update(store.r, cid, outcome="announcing", paid_minutes=1)
    store.r.hdel(keys.call(cid), "ended_ms")
    if not bridged:
        store.r.hdel(f"ics:call:{cid}", "bridged_ms")
    return cid


def leg_hangup(linkedid: str, at_ms: int, fault: str = "menu", chan: str = "PJSIP/inmate1-1") -> dict:
    return {"Event": "Hangup", "Channel": chan, "Linkedid": linkedid, "Uniqueid": linkedid,
            "Cause": "16", "Timestamp": f"{at_ms / 1000:.6f}",
            "ChanVariable": ["ICS_CALL_ID=x", f"ICS_FAULT={fault}"]}


def assert_menu_fault(store: Store, aid: str, cid: str, ended_ms: int | None = None) -> dict:
    rec = records.get(store.r, cid)
    assert (rec["reason"], rec["rule_threshold"], rec["settled"]) == ("system_error", "fault=menu", "1")
    assert json.loads(rec["evidence"])[0]["event"] == "MenuFault"
    assert json.loads(rec["evidence"])[0]["ICS_FAULT"] == "menu"
    assert rec["billed_cents"] == 0 and not rec.get("credited_cents")
    assert ended_ms is None or rec["ended_ms"] == ended_ms
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit"]  # the hold released, nothing charged
    assert store.account(aid).balance_cents == 1000 and ledger.check(store.r)["ok"]
    return rec


@pytest.mark.parametrize("bridged", [False, True])
def test_the_hangup_handler_settles_a_menu_fault_as_system_error_unbilled(store, bridged):
    aid = new_account(store, deposit=1000)
    cid = menu_fault_call(store, aid, bridged=bridged)
    settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16", "menu")
    assert_menu_fault(store, aid, cid)
    settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16", "menu")  # once
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit"]


async def test_a_menu_fault_while_redis_is_down_is_settled_by_the_listener_when_it_returns(store):
    """Redis died in the menu: the hangup handler could not settle; the listener keeps the inmate
    channel's Hangup (ICS_FAULT=menu) and records the drop, then settles, once Redis answers."""
    aid = new_account(store, deposit=1000)
    cid = menu_fault_call(store, aid)
    lis = listener(store)
    lis.store = dead_store(store)
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.inmate = cid, "PJSIP/inmate1-1"
    call.channels = {"PJSIP/inmate1-1": "9.1", "PJSIP/3125550100-2": "9.2"}
    hung_up = now_ms() - 8_000  # the called leg, hung up once it heard system-error
    lis.on_hangup(leg_hangup("9.1", hung_up, chan="PJSIP/3125550100-2"))
    lis.on_hangup(leg_hangup("9.1", hung_up + 5_000))  # the inmate, after [ics-fail]'s prompt
    while lis._tasks:
        await asyncio.sleep(0.01)
    assert lis.unsettled[cid].drop is not None and records.get(store.r, cid).get("settled") is None
    assert len(lis.unsettled) == 1 and lis.unsettled[cid].ended_ms == hung_up
    lis.store = store  # Redis is back
    await lis.retry_unsettled()
    rec = assert_menu_fault(store, aid, cid, hung_up)
    assert [e["event"] for e in json.loads(rec["evidence"])] == ["MenuFault", "Hangup"]
    assert not lis.unsettled
    await lis.retry_unsettled()
    settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16", "menu")  # a late handler: nothing more
    assert_menu_fault(store, aid, cid, hung_up)


@pytest.mark.parametrize("handler_first", [True, False])
async def test_a_menu_fault_is_settled_once_by_handler_or_listener(store, handler_first):
    aid = new_account(store, deposit=1000)
    cid = menu_fault_call(store, aid)
    if handler_first:
        settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16", "menu")
    lis = listener(store)
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.inmate, call.channels = cid, "PJSIP/inmate1-1", {"PJSIP/inmate1-1": "9.1"}
    lis.on_hangup(leg_hangup("9.1", now_ms()))
    while lis._tasks:
        await asyncio.sleep(0.01)
    if not handler_first:  # FastAGI back in time for the handler, after the listener settled
        settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16", "menu")
    assert_menu_fault(store, aid, cid)


async def test_an_inmate_hangup_without_a_fault_is_a_plain_sweep(store, monkeypatch):
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    aid = new_account(store, deposit=1000)
    cid = menu_fault_call(store, aid)
    lis = listener(store)
    call = lis.calls["9.1"] = LiveCall("9.1")
    call.call_id, call.inmate, call.channels = cid, "PJSIP/inmate1-1", {"PJSIP/inmate1-1": "9.1"}
    lis.on_hangup(leg_hangup("9.1", now_ms(), fault=""))
    while lis._tasks:
        await asyncio.sleep(0.01)
    rec = records.get(store.r, cid)
    # the inmate's channel hung up first: the sweep says so (as the hangup handler would)
    assert rec["reason"] == "inmate_hangup_before_accept" and "rule" not in rec and rec["billed_cents"] == 0


# --- Asterisk killed at any phase of a call: every call live when AMI was lost -------------------

def pre_bridge_call(store: Store, aid: str, outcome: str, rate: int = 25) -> str:
    """A call that held its first minute and is ringing (dialing) or in the announcement /
    menu (announcing / accepted); with bridged: the callee flow wrote bridged_ms."""
    cid = f"20261101130000-{abs(hash((aid, outcome))) % 16**8:08x}"
    records.create(store.r, cid, account=aid, rate_cents=rate, limit_s=900, outcome=outcome,
                   number="3125550100", inmate="123456", started_ms=now_ms() - 20_000)
    assert store.reserve(aid, cid, rate)
    records.update(store.r, cid, paid_minutes=1)
    return cid


async def killed_while_live(store, lis, calls: dict, restarted: bool = True, first_login: bool = True) -> int:
    """rebuild (first login), the calls live, AMI lost (SIGKILL), then a rebuild against a
    restarted (or the same) Asterisk with none of them left. Returns when AMI was lost."""
    if first_login:
        await lis.rebuild()
    lis.calls.update(calls)
    lis.on_ami_lost()
    lost_at = lis.ami_lost[0]
    if restarted:
        lis.manager.startup = "2026-11-29 17:05:00"
    await lis.rebuild()
    while lis._tasks:
        await asyncio.sleep(0.01)
    return lost_at


def live(linkedid: str, call_id: str, bridged: bool = False) -> LiveCall:
    call = LiveCall(linkedid, call_id=call_id, inmate=f"PJSIP/inmate1-{linkedid}", bridged=bridged)
    call.channels = {call.inmate: linkedid, f"PJSIP/3125550100-{linkedid}": linkedid + "1"}
    return call


@pytest.mark.parametrize("outcome", ["dialing", "announcing", "accepted"])
async def test_a_call_before_the_bridge_when_asterisk_was_killed_is_a_system_drop_dated_at_the_loss(
        store, monkeypatch, outcome):
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 10**12)
    aid = new_account(store, deposit=1000)
    cid = pre_bridge_call(store, aid, outcome)
    lis = listener(store)
    lost_at = await killed_while_live(store, lis, {"7.1": live("7.1", cid)})
    rec = records.get(store.r, cid)
    assert (rec["reason"], rec["rule_threshold"], rec["ended_ms"]) == ("system_error", "asterisk_restart", lost_at)
    assert (rec["settled"], rec["billed_cents"]) == ("1", 0) and "credited_cents" not in rec
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit"]  # nothing charged, the hold released
    assert store.account(aid).held_cents == 0 and ledger.check(store.r)["ok"]


async def test_a_bridge_ami_never_showed_is_billed_nothing_when_asterisk_was_killed(store, monkeypatch):
    """The callee flow writes bridged_ms just before Dial bridges; Asterisk died before both legs'
    BridgeEnter: a system drop, and no charge at all (not a charge and its credit)."""
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 10**12)
    aid = new_account(store, deposit=1000)
    cid = pre_bridge_call(store, aid, "accepted")
    records.update(store.r, cid, bridged_ms=now_ms())
    lis = listener(store)
    lost_at = await killed_while_live(store, lis, {"7.1": live("7.1", cid, bridged=False)})
    rec = records.get(store.r, cid)
    assert (rec["reason"], rec["ended_ms"]) == ("system_error", lost_at)
    assert rec["cut_ms"] == rec["bridged_ms"]
    assert [e["event"] for e in json.loads(rec["evidence"])] == ["AMIConnectionLost", "CoreStatus", "NoBridgeSeen"]
    assert (rec["billed_cents"], rec["billed_minutes"]) == (0, 0) and "credited_cents" not in rec
    assert [e["kind"] for e in store.ledger(aid)] == ["deposit"]
    assert store.account(aid).held_cents == 0 and ledger.check(store.r)["ok"]


@pytest.mark.parametrize("first", ["Hangup", "HangupRequest", "SoftHangupRequest"])
async def test_a_call_a_party_was_hanging_up_when_asterisk_was_killed_keeps_the_partys_reason(
        store, monkeypatch, first):
    """The family hung up; Asterisk died while the inmate channel's hangup handler ran: not a
    system drop. Settled after the restart as the hang-up it was, dated by that hang-up."""
    monkeypatch.setattr("ami.listener.SETTLE_GRACE_S", 0)
    monkeypatch.setattr("ami.listener.ORPHAN_MIN_AGE_MS", 10**12)
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=20)
    store.r.hdel(keys.call(cid), "ended_ms")
    lis = listener(store)
    await lis.rebuild()
    call = lis.calls["7.1"] = live("7.1", cid, bridged=True)
    hung_up = now_ms() - 1500
    lis.on_event(None, {"Event": first, "Channel": "PJSIP/3125550100-7.1", "Linkedid": "7.1", "Uniqueid": "7.11",
                        "Cause": "16" if first != "SoftHangupRequest" else "32",
                        "Timestamp": f"{hung_up / 1000:.6f}"})
    assert call.call_id and lis.ending == {"7.1": hung_up}
    lost_at = await killed_while_live(store, lis, {}, first_login=False)
    rec = records.get(store.r, cid)
    assert rec["reason"] == "called_hangup" and "rule" not in rec and lost_at > hung_up
    assert rec["ended_ms"] == hung_up
    assert (rec["billed_cents"], rec["billed_minutes"]) == (25, 1) and "credited_cents" not in rec
    assert ledger.check(store.r)["ok"]


# --- the bill ends when Asterisk says the call ended (the handler's stamp), not at the settling ---

def _ended_late(store, bridged_s: float):
    """A bridged call whose hang-up has not been settled yet (no ended_ms): the settle AGI runs now."""
    aid = new_account(store, deposit=1000)
    cid = bridged_call(store, aid, rate=25, bridged_s=bridged_s)
    store.r.hdel(keys.call(cid), "ended_ms")
    assert "ended_ms" not in records.get(store.r, cid)
    return cid, records.get(store.r, cid)["bridged_ms"]


def test_a_settle_agi_that_runs_late_bills_to_asterisks_end_stamp(store):
    # ended 59 s into the bridge; the settle AGI got to run 3 s later (load, a stalled FastAGI)
    cid, bridged = _ended_late(store, bridged_s=62)
    rec = settlement.settle(store, cid, "ANSWER", "PJSIP/3125550100-2", "PJSIP/inmate1-1", "16",
                            ended_ms=bridged + 59_000)
    assert rec["ended_ms"] == bridged + 59_000
    assert (rec["billed_minutes"], rec["billed_cents"]) == (1, 25)


def test_without_a_stamp_the_call_ends_at_the_settling(store):
    cid, bridged = _ended_late(store, bridged_s=62)
    rec = settlement.settle(store, cid, "ANSWER", "PJSIP/3125550100-2", "PJSIP/inmate1-1", "16")
    assert rec["ended_ms"] - bridged >= 62_000
    assert rec["billed_minutes"] == 2


@pytest.mark.parametrize("offset_ms", [-5_000, 3_600_000])  # before the bridge; an hour ahead
def test_an_unbelievable_stamp_is_ignored_for_the_settling_time(store, offset_ms, capsys):
    cid, bridged = _ended_late(store, bridged_s=30)
    stamp = bridged + offset_ms
    before = now_ms()
    rec = settlement.settle(store, cid, "ANSWER", "", "PJSIP/inmate1-1", "16", ended_ms=stamp)
    assert before <= rec["ended_ms"] <= now_ms()
    assert "call.end_stamp_ignored" in capsys.readouterr().out
