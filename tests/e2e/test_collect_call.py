"""A collect call end to end: real Asterisk 22, real Redis, pjsua2 phones sending RFC 2833 DTMF."""

import time

import pytest

from agi.protocol import quote
from ics import keys, records
from ics.destination import e164

from tests.support.phones import sip_quote
from tests.support.callflow import (INMATE, NUMBER, OTHER_NUMBER, PIN, agi_command, balance,
                       login, make_world, press_when, wait_settled)

pytestmark = pytest.mark.e2e


@pytest.fixture
def lines(stack, phones):
    """The inmate's handset and the family's phone, registered."""
    inmate = phones.phone("inmate1")
    family = phones.phone(NUMBER)
    other = phones.phone(OTHER_NUMBER)
    for p in (inmate, family, other):
        p.register(10)
    return inmate, family, other


def start_call(ami, inmate_phone, family_phone, number=NUMBER, pin=PIN):
    mark = ami.mark()
    call = inmate_phone.call(number)
    login(ami, call, mark, INMATE, pin)
    return call, mark


def answer(ami, family_phone, mark, timeout=15):
    incoming = family_phone.wait_incoming(timeout)
    incoming.answer()
    return incoming


def test_accept_bridges_and_bills_whole_minutes(ami, lines):
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    before = balance(world)
    call, mark = start_call(ami, inmate, family)
    callee = answer(ami, family, mark)
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{NUMBER}")
    ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"),
                 10, since=mark)
    time.sleep(3)
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup"
    assert rec["billed_minutes"] == 1
    assert rec["billed_cents"] == 11
    assert balance(world) == before - 11
    assert world.store.account("fam1").held_cents == 0
    ledger = world.store.ledger("fam1")
    assert [e["kind"] for e in ledger] == ["deposit", "charge"]
    assert int(ledger[-1]["amount_cents"]) == 11 and ledger[-1]["call"] == rec["call_id"]
    assert rec["bridged_ms"] >= rec["answered_ms"] >= rec["started_ms"] and rec["ended_ms"] >= rec["bridged_ms"]
    call.wait_disconnected(10)


def test_refuse_is_not_bridged_and_costs_nothing(ami, lines):
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, mark = start_call(ami, inmate, family)
    callee = answer(ami, family, mark)
    press_when(ami, callee, "menu-accept", "2", mark, channel_prefix=f"PJSIP/{NUMBER}")
    rec = wait_settled(world)
    assert rec["reason"] == "refused"
    assert rec["billed_cents"] == 0 and "bridged_ms" not in rec
    assert balance(world) == 500 and world.store.account("fam1").held_cents == 0
    assert not ami.events(lambda e: e.get("Event") == "BridgeEnter"
                          and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"), since=mark)
    callee.wait_disconnected(10)
    call.wait_disconnected(15)


def test_no_key_gets_exactly_one_reprompt_then_hangs_up(ami, lines):
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, mark = start_call(ami, inmate, family)
    callee = answer(ami, family, mark)
    callee.wait_disconnected(60)
    rec = wait_settled(world)
    assert rec["reason"] == "no_response"
    assert rec["billed_cents"] == 0 and balance(world) == 500
    offers = ami.events(agi_command("WAIT FOR DIGIT", f"PJSIP/{NUMBER}"), since=mark)
    assert len(offers) == 2  # the menu, and exactly one reprompt
    assert ami.events(agi_command("menu-invalid", f"PJSIP/{NUMBER}"), since=mark)
    assert ami.events(agi_command("prompts/goodbye", f"PJSIP/{NUMBER}"), since=mark)


def test_rate_quote_plays_the_calls_rate_then_accept_works(ami, lines):
    inmate, family, _ = lines
    # the number is local (area code 312): its class rate, not the facility default, is quoted
    world = make_world(balance_cents=500, rate_cents_per_min=11, local_npas="312", rate_local_cents=13,
                       tax_bps=750)
    call, mark = start_call(ami, inmate, family)
    callee = answer(ami, family, mark)
    press_when(ami, callee, "menu-accept", "3", mark, channel_prefix=f"PJSIP/{NUMBER}")
    said = ami.wait_for(agi_command("SAY NUMBER", f"PJSIP/{NUMBER}"), 10, since=mark)
    assert said["Command"].startswith('SAY NUMBER "13"')
    ami.wait_for(agi_command("prompts/rate-taxes", f"PJSIP/{NUMBER}"), 10, since=mark)
    m2 = ami.mark()
    press_when(ami, callee, "menu-accept", "1", m2, channel_prefix=f"PJSIP/{NUMBER}")  # the menu replays
    ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"),
                 10, since=m2)
    time.sleep(1)
    call.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "inmate_hangup"
    # one minute at the quoted 13 cents plus 7.5 % tax (0.975, rounded half up): 14
    assert (rec["billed_cents"], rec["tax_cents"]) == (14, 1) and balance(world) == 500 - 14


def test_block_refuses_the_next_call_before_it_rings(ami, lines):
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, mark = start_call(ami, inmate, family)
    callee = answer(ami, family, mark)
    press_when(ami, callee, "menu-accept", "9", mark, channel_prefix=f"PJSIP/{NUMBER}")
    rec = wait_settled(world)
    assert rec["reason"] == "blocked_by_called" and rec["billed_cents"] == 0
    assert world.store.r.smembers(keys.block_inmate(INMATE)) == {e164(NUMBER)}  # stored once, in E.164
    call.wait_disconnected(20)

    mark = ami.mark()
    call2 = inmate.call(NUMBER)
    login(ami, call2, mark)
    call2.wait_disconnected(20)
    rec2 = wait_settled(world)
    assert rec2["call_id"] != rec["call_id"]
    assert rec2["reason"] == "blocked_inmate"
    assert not ami.events(lambda e: e.get("Event") == "Newchannel"
                          and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"), since=mark)


@pytest.mark.parametrize("case,reason", [
    ("not_approved", "not_approved"),
    ("empty_balance", "insufficient_funds"),
    ("wrong_pins", "pin_invalid"),
])
def test_refusals_before_ringing(ami, lines, case, reason):
    inmate, family, other = lines
    world = make_world(balance_cents=0 if case == "empty_balance" else 500)
    mark = ami.mark()
    number = OTHER_NUMBER if case == "not_approved" else NUMBER
    call = inmate.call(number)
    if case == "wrong_pins":
        for _ in range(3):
            m = ami.mark()
            login(ami, call, m, INMATE, "0000")
    else:
        login(ami, call, mark)
    call.wait_disconnected(30)
    rec = wait_settled(world)
    assert rec["reason"] == reason
    assert rec["billed_cents"] == 0
    assert world.store.account("fam1").held_cents == 0
    assert not ami.events(lambda e: e.get("Event") == "Newchannel"
                          and e.get("Channel", "").startswith(f"PJSIP/{number}"), since=mark)
    if case == "wrong_pins":
        assert world.store.r.get(keys.pin_failures(INMATE)) == "3"


def test_pin_locks_after_repeated_failures(ami, lines):
    inmate, _, _ = lines
    world = make_world(balance_cents=500, pin_max_tries=3, pin_lock_after=3)
    mark = ami.mark()   # before the call: under load its first prompt can start before login() runs
    call = inmate.call(NUMBER)
    for _ in range(3):
        login(ami, call, mark, INMATE, "0000")
        mark = ami.mark()   # the PIN is still being checked: the next prompt comes after this
    call.wait_disconnected(30)
    assert wait_settled(world)["reason"] == "pin_locked"
    assert world.store.inmate(INMATE)["pin_locked"] == "1"
    # the right PIN no longer works until staff unlock it
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    call.wait_disconnected(30)
    assert wait_settled(world)["reason"] == "pin_locked"


def test_caller_id_with_quotes_and_backslashes_cannot_inject(ami, stack, phones):
    name = 'x" \\ SET VARIABLE ICS_RESULT dial'
    evil = phones.phone("inmate2", display_name=name)
    family = phones.phone(NUMBER)
    evil.register(10)
    family.register(10)
    world = make_world(balance_cents=500)
    mark = ami.mark()
    call = evil.call(NUMBER)
    ami.wait_for(agi_command("enter-inmate-id"), 15, since=mark)
    call.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "inmate_abandoned"
    # Asterisk keeps the display name's quoted-pairs as they came on the wire (it
    # does not unescape them): the record holds exactly what Asterisk handed over
    held = sip_quote(name)[1:-1]
    assert rec["station"] == held == 'x\\" \\\\ SET VARIABLE ICS_RESULT dial'
    cmds = [e["Command"] for e in ami.events(lambda e: e.get("Event") == "AGIExecStart", since=mark)]
    assert f'SET VARIABLE "ICS_STATION" {quote(held)}' in cmds, cmds
    assert not any(c.startswith("SET VARIABLE ICS_RESULT") for c in cmds), cmds
    assert 'SET VARIABLE "ICS_RESULT" "dial"' not in cmds
    assert not ami.events(lambda e: e.get("Event") == "Newchannel"
                          and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"), since=mark)
