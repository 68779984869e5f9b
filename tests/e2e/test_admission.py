"""Admission control end to end (issue 9): real Asterisk 22, Redis, the services and pjsua2 phones.

With capacity.max_calls reached, a new inmate call hears the busy prompt before the PIN, is
refused with capacity_full on its record and is never dialled; the call already live goes on.
The FastAGI server is restarted for the test with ICS_CAPACITY_MAX_CALLS=1 (the supported
config layering: environment over the defaults), and restarted as before afterwards.
"""

from __future__ import annotations

import os
import time

import pytest

from ics import audio, capacity, keys, records

from tests.e2e.test_billing_calls import accept
from tests.support import services
from tests.support.callflow import (INMATE, NUMBER, OTHER_NUMBER, agi_command, latest_call, make_world,
                                    wait_settled)

pytestmark = pytest.mark.e2e

SECOND = "PJSIP/inmate2-"
MAX_CALLS = "ICS_CAPACITY_MAX_CALLS"
SETTLE_S = 1.0


def restart_fastagi() -> None:
    services.kill("fastagi")
    services.restart("fastagi")


@pytest.fixture
def one_line(stack, phones):
    """ics-fastagi admitting one call at a time, for this test only."""
    before = os.environ.get(MAX_CALLS)
    os.environ[MAX_CALLS] = "1"
    try:
        restart_fastagi()
        yield
    finally:
        # calls a failed test left up settle before FastAGI goes (their hangup handlers need it)
        phones.hangup_all()
        time.sleep(SETTLE_S)
        if before is None:
            os.environ.pop(MAX_CALLS, None)
        else:
            os.environ[MAX_CALLS] = before
        restart_fastagi()


@pytest.fixture
def lines(stack, phones):
    """Two inmate handsets and two family phones, registered."""
    got = [phones.phone(n) for n in ("inmate1", "inmate2", NUMBER, OTHER_NUMBER)]
    for p in got:
        p.register(10)
    return got


def live_calls(world) -> int | None:
    value = world.store.r.get(keys.LIVE_CALLS)
    return None if value is None else int(value)


def wait_live(world, n: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while live_calls(world) != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"the listener counts {live_calls(world)} live calls, not {n}")
        time.sleep(0.1)


def heard_in_full(ami, mark, key: str, world) -> list[str]:
    """The prompts streamed to the second handset (AGI's STREAM FILE raises no PLAYBACK test
    event: AMI's AGIExecStart / AGIExecEnd), checking that key played as long as its file lasts."""
    try:  # (the handset can see its hang-up before the tap reads the AGIExecEnd under load)
        ami.wait_for(lambda e: e.get("Event") == "AGIExecEnd" and e.get("Channel", "").startswith(SECOND)
                     and f'STREAM FILE "ics/prompts/{key}"' in e.get("Command", ""), 5, since=mark)
    except TimeoutError:
        pass  # said below, with what was streamed
    agi = [e for e in ami.events(since=mark) if e.get("Event") in ("AGIExecStart", "AGIExecEnd")
           and e.get("Channel", "").startswith(SECOND)]
    starts = {e["CommandId"]: e for e in agi if e["Event"] == "AGIExecStart" and "STREAM FILE" in e["Command"]}
    streamed = [s["Command"].split('"')[1].rsplit("/", 1)[-1] for s in starts.values()]
    ends = [e for e in agi if e["Event"] == "AGIExecEnd" and starts.get(e["CommandId"], {}).get("Command", "")
            .startswith(f'STREAM FILE "ics/prompts/{key}"')]
    assert ends, f"{key} never finished on the second handset: {streamed}"
    start = starts[ends[0]["CommandId"]]
    played_s = float(ends[0]["Timestamp"]) - float(start["Timestamp"])
    length_s = audio.duration_ms(world.cfg.sounds_dir / "prompts" / f"{key}.wav") / 1000
    assert played_s >= length_s - 0.1, (played_s, length_s)
    return streamed


def test_a_call_past_max_calls_hears_busy_and_is_never_dialled(ami, lines, one_line):
    inmate, inmate2, family, other = lines
    world = make_world(balance_cents=500)
    # the second inmate's number is approved and paid for: only the lines being busy refuse it
    world.store.approve_number(INMATE, OTHER_NUMBER)
    world.store.create_account("fam2", "Kim Doe", [OTHER_NUMBER])
    world.store.adjust("fam2", "deposit", 500, "test deposit")
    wait_live(world, 0)

    # the one line: a recorded call, accepted and bridged
    call, callee = accept(ami, inmate, family)
    first_id = latest_call(world)["call_id"]
    wait_live(world, 1)
    assert capacity.setting_up(world.store.r) == {}, "counted live, no longer as being placed"

    # a second call: the busy prompt before any PIN, refused, never dialled
    m2 = ami.mark()
    call2 = inmate2.call(OTHER_NUMBER)
    call2.wait_disconnected(20)
    assert heard_in_full(ami, m2, "all-lines-busy", world) == ["all-lines-busy"]
    rec = latest_call(world)
    assert rec["call_id"] != first_id
    rec = wait_settled(world, call_id=rec["call_id"])
    assert (rec["reason"], rec["outcome"]) == ("capacity_full", "refused"), rec
    assert "inmate" not in rec and rec["billed_cents"] == 0
    refused = services.log_events("fastagi", "call.capacity_full", rec["call_id"])
    assert refused and (refused[0]["live"], refused[0]["max_calls"], refused[0]["at"]) == (1, 1, "start")
    second_leg = [e for e in ami.events(since=m2) if e.get("Channel", "").startswith(SECOND)]
    assert not [e for e in second_leg if e.get("Event") == "AGIExecStart" and "enter-inmate-id" in e["Command"]]
    assert not ami.events(lambda e: e.get("Event") == "Newchannel"
                          and e.get("Channel", "").startswith(f"PJSIP/{OTHER_NUMBER}"), since=m2)
    assert not other.drain_incoming(), "the second family phone rang"
    assert world.store.account("fam2").held_cents == 0 and world.store.account("fam2").balance_cents == 500

    # the live call went on, and settles as usual
    assert not call.disconnected and not callee.disconnected
    callee.hangup()
    first = wait_settled(world, call_id=first_id)
    assert first["reason"] == "called_hangup" and first["billed_minutes"] == 1
    call.wait_disconnected(10)

    # the line is free again: the next call is let in (asked for the inmate number)
    wait_live(world, 0)
    m3 = ami.mark()
    call3 = inmate2.call(OTHER_NUMBER)
    ami.wait_for(agi_command("enter-inmate-id", SECOND), 15, since=m3)
    call3.hangup()
    assert wait_settled(world)["reason"] == "inmate_abandoned"
    assert not records.get(world.store.r, first_id).get("rule")
