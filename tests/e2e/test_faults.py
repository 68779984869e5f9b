"""The fault matrix: each part of the stack SIGKILLed at each phase of a call, then restarted.

Parts: redis, fastagi (ics-fastagi), ami (ics-ami), asterisk. Phases, each reached
by waiting on AMI events or the call record (never a fixed sleep):

  ringing       the family's phone rings (INVITE received, not answered)
  announcement  the family answered; the announcement's first prompt is playing
                (AGIExecStart announce-from on the called channel)
  menu          the accept menu is playing (AGIExecStart menu-accept)
  bridged       both legs entered the bridge (BridgeEnter of the called channel)
  paid_end      PAID_END_KILL_S (49.5 s) after the bridge: just before the listener holds the
                next minute (10 s before the paid one ends), so the part is down when it is due
  settlement    the family hung up and the inmate channel's hangup handler started
                ([ics-settle] Newexten): for every part, including the listener (which
                takes no part in it) and Asterisk (the handler's AGI is cut off)

What the parties do after the kill (the story every cell tells):
  - announcement / menu: the family presses 1 at once (a key pressed during the
    announcement counts as the choice);
  - while the part is down a second inmate (inmate2) calls another number: the
    attempt must be refused with a spoken message (with Asterisk down: not answered);
  - paid_end: both stay on the line until the call ends or until 4 s past the paid
    minute plus the backstop (rating.BACKSTOP_MS);
  - the part is restarted (always, in a finally: the next test gets a healthy stack;
    after Asterisk the phones register again and the AMI tap logs in again);
  - whoever is still on the line hangs up: the inmate while ringing, else the family.

Then tests.support.faults checks the invariants (free talk, charges, settled once
and in time with a true reason, refusal while down, a system drop explained to
both parties, ledger check) and the cell
fails listing every broken one with the values observed. README "When a part
fails" is the same matrix, as the parties hear it.
"""

from __future__ import annotations

import time

import pytest

from ics import keys, records
from ics.store import now_ms

from tests.e2e.test_collect_call import lines  # noqa: F401 (fixture)
from tests.support import faults, services
from tests.support.callflow import (DTMF_SETTLE_S, FACILITY, NUMBER, OTHER_NUMBER, agi_command, login,
                                    make_world)
from tests.support.faults import COMPONENTS, PHASES, Cell
from tests.support.phones import PhoneError

pytestmark = pytest.mark.e2e

INMATE_LEG = "PJSIP/inmate1-"
CALLED_LEG = f"PJSIP/{NUMBER}-"
PROBE_INMATE, PROBE_PIN = "654321", "2468"
PROBE_LEG = "PJSIP/inmate2-"


def _world():
    world = make_world(balance_cents=500, rule_silence=False)  # the phones send pure silence
    s = world.store
    s.create_inmate(PROBE_INMATE, FACILITY, "Pat Roe", PROBE_PIN)
    s.approve_number(PROBE_INMATE, OTHER_NUMBER)
    s.create_account("fam2", "Kim Roe", [OTHER_NUMBER])
    s.adjust("fam2", "deposit", 500, "test deposit")
    s.set_name_recorded(PROBE_INMATE)
    return world


def _restore(component: str, ami, phones) -> None:
    services.restart(component)
    if component == "asterisk":
        ami.reconnect()
        phones.register_all()


def _probe(cell: Cell, ami, phones) -> None:
    """A new call while the part is down: refused with a spoken message, never rung through."""
    handset, other = phones.phone("inmate2"), phones.phone(OTHER_NUMBER)
    other.drain_incoming()
    mark = ami.mark()
    call = handset.call(OTHER_NUMBER)
    sent: set[str] = set()
    deadline = time.monotonic() + (0 if cell.component == "asterisk" else 30)
    p = cell.probe
    gone_at = None
    while time.monotonic() < deadline:
        if call.disconnected:  # (under load its last events reach the tap after the handset saw the hang-up)
            gone_at = gone_at or time.monotonic()
            if p.get("refused") or cell.component == "asterisk" or time.monotonic() - gone_at > 2:
                break
        if other.drain_incoming():
            p["rang"] = True
            break
        if cell.component != "asterisk":
            evs = ami.since(mark)
            mark += len(evs)
            for e in evs:
                ch = e.get("Channel", "")
                if not ch.startswith(PROBE_LEG):
                    continue
                p.setdefault("events", []).append(" ".join(str(e.get(k)) for k in (
                    "Event", "Context", "Exten", "Priority", "AppData", "Variable", "Value", "Cause", "State", "Message")
                    if e.get(k) is not None))
                if e.get("Event") == "TestEvent" and e.get("State") == "PLAYBACK":
                    p.setdefault("heard", []).append(e.get("Message"))
                    if e.get("Message") in faults.REFUSAL_PROMPTS:
                        p["refused"] = True
                # the call flow's own refusals stream the prompt (AGI STREAM FILE: no PLAYBACK event)
                if e.get("Event") == "AGIExecStart" and e.get("Command", "").startswith("STREAM FILE"):
                    p.setdefault("heard", []).append(e.get("Command"))
                    if any(f'"{prompt}"' in e.get("Command", "") for prompt in faults.REFUSAL_PROMPTS):
                        p["refused"] = True
                for step, digits in (("enter-inmate-id", PROBE_INMATE + "#"), ("enter-pin", PROBE_PIN + "#")):
                    if step not in sent and e.get("Event") == "AGIExecStart" and step in e.get("Command", ""):
                        sent.add(step)
                        time.sleep(DTMF_SETTLE_S)
                        call.dtmf(digits)
        elif call.state == "CONFIRMED":
            break
        time.sleep(0.1)
    if cell.component == "asterisk":
        # nobody to speak: the handset's INVITE must not be answered (no 200, never confirmed)
        # (the INVITE gets no provisional answer, so it cannot be cancelled: wait for the
        # handset's own 408 after SIP's timer B, 32 s, or its retransmission would reach the
        # restarted Asterisk and place a call then)
        call.wait_for(lambda h: h.disconnected or h.state == "CONFIRMED", 40)
        p["refused"] = call.state != "CONFIRMED" and call.last_status_code != 200
        p["seen"] = f"SIP {call.state} {call.last_status_code} {call.last_reason}"
    elif not p.get("refused"):
        p["seen"] = (f"heard {p.get('heard', [])}, state {call.state}, SIP {call.last_status_code} "
                     f"{call.last_reason}, {len(p.get('events', []))} events on its channel: {p.get('events', [])[:12]}")
    if not call.disconnected:
        call.hangup()
        call.wait_disconnected(10)


def _reach(phase: str, ami, world, call, callee, mark) -> None:
    if phase == "ringing":
        return
    callee.answer()
    if phase == "announcement":
        ami.wait_for(agi_command("announce-from", CALLED_LEG), 15, since=mark)
        return
    ami.wait_for(agi_command("menu-accept", CALLED_LEG), 30, since=mark)
    if phase == "menu":
        return
    time.sleep(DTMF_SETTLE_S)
    callee.dtmf("1")
    ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(CALLED_LEG),
                 15, since=mark)
    if phase == "paid_end":
        rec = records.get(world.store.r, records.recent(world.store.r, 1)[0]["call_id"])
        at = rec["bridged_ms"] / 1000 + faults.PAID_END_KILL_S
        call.wait_for(lambda h: h.disconnected or time.time() >= at, faults.PAID_END_KILL_S + 10)
    elif phase == "settlement":
        callee.hangup()
        ami.wait_for(lambda e: e.get("Event") == "Newexten" and e.get("Context") == "ics-settle"
                     and e.get("Channel", "").startswith(INMATE_LEG), 10, since=mark)


def _wait_settled(cell: Cell, world) -> None:
    deadline = time.time() + faults.SETTLE_S + 1
    while time.time() < deadline:
        rec = records.get(world.store.r, cell.call_id) or {}
        if rec.get("settled") == "1":
            cell.settled_at = time.time()
            break
        time.sleep(0.1)
    cell.record = records.get(world.store.r, cell.call_id) or {}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_fault(component, phase, ami, phones, lines):  # noqa: F811
    inmate, family, _ = lines
    phones.phone("inmate2").register(10)
    world = _world()
    cell = Cell(component, phase)
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(20)
    cell.call_id = records.recent(world.store.r, 1)[0]["call_id"]
    _reach(phase, ami, world, call, callee, mark)

    cell.killed_at = time.time()
    services.kill(component)
    restored = False
    try:
        if component == "asterisk":  # the dialogs are gone with it: the phones notice later, or never
            for h in (call, callee):
                if not h.disconnected:
                    h.hangup()
        elif phase in ("announcement", "menu"):
            time.sleep(DTMF_SETTLE_S)
            try:
                callee.dtmf("1")
            except PhoneError:  # the system already dropped the called leg
                assert callee.disconnected or callee.wait_disconnected(2)
        _probe(cell, ami, phones)
        if phase == "paid_end" and component != "asterisk":
            rec_bridged = cell.killed_at - faults.PAID_END_KILL_S
            until = rec_bridged + (60_000 + faults.rating.BACKSTOP_MS) / 1000 + 4
            call.wait_for(lambda h: h.disconnected or time.time() >= until, until - time.time() + 5)
        _restore(component, ami, phones)
        restored = True
        cell.back_at = services.last_up_at  # the part itself is back (not the listener's re-login)
    finally:
        if not restored:
            _restore(component, ami, phones)

    # whoever is still on the line hangs up
    if component == "asterisk" or phase == "settlement":
        cell.ended_by = "system" if component == "asterisk" and phase != "settlement" else "test-family"
    elif call.disconnected or callee.disconnected:
        cell.ended_by = "system"
    elif phase == "ringing" and not callee.state == "CONFIRMED":
        cell.ended_by = "test-inmate"
        call.hangup()
    else:
        cell.ended_by = "test-family"
        callee.hangup()
    for h in (call, callee):
        try:
            h.wait_disconnected(15)
        except TimeoutError:
            cell.fail("settled", f"{h!r} still up 15 s after the hang-up")
            h.hangup()

    faults.observe_bridge(cell, ami, mark, (INMATE_LEG, CALLED_LEG))
    # the true reason, from what happened
    if cell.ended_by == "system":
        cell.expected_reasons = ("system_error",) if cell.bridged_at is None or component == "asterisk" \
            else ("system_error", "time_limit")
    elif cell.ended_by == "test-inmate":
        cell.expected_reasons = ("inmate_hangup_before_accept",)
    else:
        cell.expected_reasons = ("called_hangup",) if cell.bridged_at is not None else ("called_hangup_before_accept",)

    _wait_settled(cell, world)
    charges = [int(e["amount_cents"]) for e in world.store.ledger(world.account)
               if e["kind"] == "charge" and e.get("call") == cell.call_id]
    faults.check_free_talk(cell)
    faults.check_charged(cell, charges)
    faults.check_settled(cell, faults.settled_log_lines(cell.call_id), charges)
    faults.check_refused(cell)
    faults.check_explained(cell, ami, mark, (INMATE_LEG, CALLED_LEG))
    faults.check_ledger(cell)
    faults.write_result(cell)
    assert not cell.failures, f"{component} killed at {phase}:\n  " + "\n  ".join(cell.failures)


def test_ledger_check_fails_on_a_stale_hold(stack, redis_client):
    """A hold whose call has ended is a failure of `icsctl ledger check` (issue 8, item 2)."""
    world = make_world(balance_cents=500)
    assert faults.ledger_check()[0] == 0
    call_id = records.new_call_id()
    ended = now_ms() - 60_000
    records.create(world.store.r, call_id, facility=FACILITY, account=world.account, number=NUMBER,
                   started_ms=ended - 30_000, ended_ms=ended, reason="called_hangup", held_cents=11,
                   paid_minutes=1)
    world.store.r.hincrby(keys.account(world.account), "held_cents", 11)  # held, as a reserve would
    rc, out = faults.ledger_check()
    assert rc != 0, f"ledger check passed with a hold of 11 cents on call {call_id}, ended a minute ago:\n{out}"
