"""Relay (TTY / TRS) and free lines end to end: real Asterisk 22, Redis and pjsua2 phones.

A relay call carries a TTY's Baudot tones and long silences: the audio rules must not cut it,
and it costs nothing. A free, unrecorded line (a PREA hotline) is reached whatever the approved
list and the schedule say, never billed or recorded, and every use is audited without content.
"""

from __future__ import annotations

import array
import json
import math
import random
import time
import wave

import pytest

from ami.rules import AUDIO_RULES

from tests.e2e.test_policy import _other_day
from tests.support.callflow import INMATE, NUMBER, login, make_world, press_when, wait_settled

pytestmark = pytest.mark.e2e

RELAY = "3125550108"   # a TRS provider's number, as the facility configures it
HOTLINE = "3125550107"  # the state's PREA reporting line

BAUD_BIT_S = 1 / 45.45       # US TTY: 45.45 baud Baudot FSK
MARK_HZ, SPACE_HZ = 1400, 1800


def baudot_wav(path, tones_s: float, silence_s: float, rate: int = 8000) -> None:
    """A TTY typing for tones_s (random 5-bit characters: a space start bit, five data bits,
    1.5 mark stop bits, continuous phase, -12 dBFS), then silence_s of silence."""
    rng = random.Random(13)
    samples = array.array("h")
    phase, amp = 0.0, 32767 * 10 ** (-12 / 20)

    def tone(hz: float, seconds: float) -> None:
        nonlocal phase
        for _ in range(int(seconds * rate)):
            phase += 2 * math.pi * hz / rate
            samples.append(int(amp * math.sin(phase)))

    while len(samples) < tones_s * rate:
        tone(SPACE_HZ, BAUD_BIT_S)
        for bit in (rng.getrandbits(1) for _ in range(5)):
            tone(MARK_HZ if bit else SPACE_HZ, BAUD_BIT_S)
        tone(MARK_HZ, 1.5 * BAUD_BIT_S)
    samples.extend([0] * int(silence_s * rate))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def accepted(ami, phones, number: str):
    """The inmate's phone calls number, whose phone answers and accepts: (inmate's call, called
    call, AMI mark), once both legs are bridged."""
    inmate, far = phones.phone("inmate1"), phones.phone(number)
    for p in (inmate, far):
        p.register(10)
    mark = ami.mark()
    call = inmate.call(number)
    login(ami, call, mark)
    callee = far.wait_incoming(15)
    callee.answer()
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{number}")
    ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(f"PJSIP/{number}"),
                 10, since=mark)
    return call, callee, mark


def test_relay_call_with_baudot_tones_and_a_minute_of_silence_is_not_cut_and_costs_nothing(ami, stack, phones,
                                                                                             tmp_path):
    # the relay number is on no approved list and has no account; the silence rule would fire
    # after 20 s and the digits rule is on
    world = make_world(balance_cents=500, relay_numbers=f"711, {RELAY}", silence_s=20)
    before = world.store.account("fam1").balance_cents
    wav = tmp_path / "tty.wav"
    baudot_wav(wav, tones_s=15, silence_s=65)
    call, callee, _ = accepted(ami, phones, RELAY)
    callee.talk(str(wav))  # the relay's TTY types for 15 s, then nothing for 60 s and more
    time.sleep(77)
    assert not callee.disconnected and not call.disconnected, "the relay call was cut"
    callee.quiet()
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup", rec
    assert "rule" not in rec and "cut_ms" not in rec
    assert rec["ended_ms"] - rec["bridged_ms"] >= 75_000
    # never billed: rate 0, nothing held, no account
    assert (rec["line"], rec["free"], rec["rate_cents"], rec["held_cents"], rec["billed_cents"]) == \
        ("relay", "1", 0, 0, 0)
    assert rec.get("account", "") == ""
    assert world.store.account("fam1").balance_cents == before
    # why no audio rule applied, on the record
    assert rec["rules_off"] == ",".join(sorted(AUDIO_RULES))
    responses = json.loads(rec["responses"])  # what the listener applied: every audio rule off
    assert all(responses[rule] == "off" for rule in AUDIO_RULES) and responses["hold"] == "disconnect"
    assert "64.6040" in rec["rules_off_why"] and "64.6040" in rec["responses_why"]
    assert "64.6040" in rec["rules_off_why"] and "TTY tones" in rec["rules_off_why"]
    # recorded per the facility's policy (relay_recorded, on by default)
    assert rec["recording"]
    call.wait_disconnected(10)


def test_free_unrecorded_hotline_outside_the_schedule_and_the_list(ami, stack, phones):
    # calls are allowed only on another day; the hotline is on no list and has no account
    world = make_world(balance_cents=500, schedule=f"{_other_day()} 00:00-24:00")
    world.store.set_number_info(HOTLINE, free=True, unrecorded=True, note="PREA hotline")
    call, callee, mark = accepted(ami, phones, HOTLINE)
    time.sleep(3)
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup" and (rec["line"], rec["billed_cents"], rec["held_cents"]) == \
        ("free", 0, 0)
    assert "recording" not in rec
    assert not ami.events(lambda e: e.get("Event") == "MixMonitorStart", since=mark)
    # the announcement leaves out the recording notice on an unrecorded line
    assert not ami.events(lambda e: e.get("Event") == "AGIExecStart"
                          and "announce-recorded" in e.get("Command", ""), since=mark)
    # audited: who, which call, which number; nothing of what was said
    audit = world.store.audit_entries(rec["call_id"])
    assert [(a["action"], a["detail"]) for a in audit] == \
        [("free_call", "number=+13125550107 free=1 recorded=0")], audit
    # the same schedule refuses an ordinary number, and the inmate's list was never touched
    mark = ami.mark()
    call2 = phones.phone("inmate1").call(NUMBER)
    login(ami, call2, mark)
    call2.wait_disconnected(20)
    assert wait_settled(world)["reason"] == "outside_schedule"
    assert world.store.number_state(INMATE, HOTLINE) is None


def test_tty_to_tty_call_is_billed_at_most_the_facilitys_tty_rate(ami, stack, phones):
    world = make_world(balance_cents=500, rate_cents_per_min=11, tty_rate_cents=3)
    world.store.set_number_info(NUMBER, tty=True)  # the family's line is a TTY
    call, callee, _ = accepted(ami, phones, NUMBER)
    time.sleep(3)
    callee.hangup()
    rec = wait_settled(world)
    # one minute at the TTY rate (3), not the voice rate (11); the audio rules off, and why
    assert (rec["line"], rec["rate_cents"], rec["billed_minutes"], rec["billed_cents"]) == ("tty", 3, 1, 3)
    assert world.store.account("fam1").balance_cents == 500 - 3
    assert rec["rules_off"] == ",".join(sorted(AUDIO_RULES)) and "TTY" in rec["rules_off_why"]
    call.wait_disconnected(10)
