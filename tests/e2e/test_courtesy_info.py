"""The courtesy first call and the billing-information key, end to end: real Asterisk 22, Redis
and pjsua2 phones."""

from __future__ import annotations

import pytest

from ics import keys

from tests.support.callflow import INMATE, agi_command, login, make_world, press_when, wait_settled

pytestmark = pytest.mark.e2e

UNFUNDED = "3125550106"  # approved, but no account pays for it
FAMILY = f"PJSIP/{UNFUNDED}"


@pytest.fixture
def lines(stack, phones):
    inmate, family = phones.phone("inmate1"), phones.phone(UNFUNDED)
    for p in (inmate, family):
        p.register(10)
    return inmate, family


def playback(ami, mark, prefix: str) -> list[str]:
    return [e.get("Message", "") for e in ami.events(lambda e: e.get("Event") == "TestEvent" and e.get("State") == "PLAYBACK"
                                             and e.get("Channel", "").startswith(prefix), since=mark)]


def test_courtesy_call_is_free_once_and_ends_telling_how_to_open_an_account(ami, lines):
    inmate, family = lines
    world = make_world(balance_cents=500, courtesy_call_s=60, rule_silence=False)  # nobody talks here
    world.store.approve_number(INMATE, UNFUNDED)
    mark = ami.mark()
    call = inmate.call(UNFUNDED)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.answer()
    # told it is free and for how long, then accepts
    ami.wait_for(agi_command("prompts/courtesy-offer", FAMILY), 30, since=mark)
    said = ami.wait_for(agi_command("SAY NUMBER", FAMILY), 10, since=mark)
    assert said["Command"].startswith('SAY NUMBER "1"')
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=FAMILY)
    ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(FAMILY), 10, since=mark)
    callee.wait_disconnected(80)  # the facility's 60 s, then the way to a prepaid account
    rec = wait_settled(world)
    assert rec["reason"] == "time_limit" and (rec["line"], rec["billed_cents"], rec["held_cents"]) == \
        ("courtesy", 0, 0), rec
    assert 59_000 <= rec["cut_ms"] - rec["bridged_ms"] <= 62_000
    heard = [h for h in playback(ami, mark, FAMILY) if h.startswith("ics/")]
    assert heard[-2:] == ["ics/prompts/cut-time_limit", "ics/prompts/courtesy-end"], heard
    # ... and the billing number, digit by digit (Asterisk's own digits: PLAYBACK of each)
    after = playback(ami, mark, FAMILY)
    after = after[after.index("ics/prompts/courtesy-end") + 1:]
    assert after == [f"digits/{d}" for d in "8005550199"], after
    assert "ics/prompts/courtesy-end" not in playback(ami, mark, "PJSIP/inmate1")  # told to the family only
    call.wait_disconnected(10)

    # once per number: the next call is refused as before
    mark = ami.mark()
    call2 = inmate.call(UNFUNDED)
    login(ami, call2, mark)
    call2.wait_disconnected(20)
    assert wait_settled(world)["reason"] == "needs_prepaid"


def test_unanswered_courtesy_call_is_not_used_up_and_off_by_default(ami, lines):
    inmate, family = lines
    world = make_world(balance_cents=500)  # courtesy_call_s 0: off
    world.store.approve_number(INMATE, UNFUNDED)
    mark = ami.mark()
    call = inmate.call(UNFUNDED)
    login(ami, call, mark)
    call.wait_disconnected(20)
    assert wait_settled(world)["reason"] == "needs_prepaid"

    world.store.r.hset(keys.facility("main"), "courtesy_call_s", 120)  # turned on: read per call
    mark = ami.mark()
    call = inmate.call(UNFUNDED)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.hangup(486)  # busy: never talked
    rec = wait_settled(world)
    assert rec["line"] == "courtesy" and rec["billed_cents"] == 0
    assert world.store.take_courtesy(UNFUNDED, "probe")  # given back: still there to take


def test_info_key_reads_the_billing_number_and_how_to_hear_the_rate(ami, stack, phones):
    from tests.support.callflow import NUMBER
    inmate, family = phones.phone("inmate1"), phones.phone(NUMBER)
    for p in (inmate, family):
        p.register(10)
    world = make_world(balance_cents=500, billing_phone="(800) 555-0123")
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.answer()
    ami.wait_for(agi_command("prompts/announce-provider", f"PJSIP/{NUMBER}"), 30, since=mark)  # who provides it
    press_when(ami, callee, "prompts/menu-info", "0", mark, channel_prefix=f"PJSIP/{NUMBER}")
    said = ami.wait_for(agi_command("SAY DIGITS", f"PJSIP/{NUMBER}"), 10, since=mark)
    assert said["Command"].startswith('SAY DIGITS "8005550123"')
    ami.wait_for(agi_command("prompts/info-rate", f"PJSIP/{NUMBER}"), 10, since=mark)
    ami.wait_for(agi_command("digits/3", f"PJSIP/{NUMBER}"), 10, since=mark)  # the quote key
    m2 = ami.mark()
    press_when(ami, callee, "prompts/menu-accept", "2", m2, channel_prefix=f"PJSIP/{NUMBER}")
    rec = wait_settled(world)
    assert rec["reason"] == "refused" and rec["billed_cents"] == 0
    call.wait_disconnected(20)
