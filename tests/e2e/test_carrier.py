"""Three-way calls behind a carrier-like far end: the called party's flash never reaches us as SIP.

Our Asterisk dials the called number over a PJSIP trunk (dial.template "PJSIP/{e164}@carrier")
to a second Asterisk acting as the carrier's switch (tests/support/carrier.py), which rings its
subscriber, a pjsua2 phone. The subscriber flashes with SIP INFO; the switch keeps the flash to
itself and puts our trunk leg onto what a carrier plays: dead air, dial tone, the digits in band,
ringback, a third voice. Our listener must act on that audio alone (res_ics_tonewatch, ICSTone),
in PCMU and in PCMA, and leave benign calls on the same path alone.
"""

import json
import random
import re
import time

import numpy as np
import pytest

from bench.threeway import corpus
from tests.conftest import asterisk_log_problems
from tests.e2e.test_enforcer import assert_cut, bridged, still_up
from tests.support import services
from tests.support.callflow import wait_settled
from tests.support.carrier import CALLED_LEG, Carrier

pytestmark = pytest.mark.e2e


def fired(rec):
    """What the listener did on the call: [{rule, response, evidence, acted_ms, ...}]."""
    return json.loads(rec.get("fired") or "[]")


@pytest.fixture(scope="module")
def carrier(stack, phones):
    c = Carrier(phones)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def lines(carrier, phones):
    inmate = phones.phone("inmate1")
    inmate.register(10)
    for p in (inmate, carrier.line):
        p.drain_incoming()
    return inmate, carrier.line, None


@pytest.fixture(autouse=True)
def _carrier_log(request):
    """The switch's own log: an ERROR or WARNING there fails the test too (same allowlist)."""
    if "carrier" not in request.fixturenames:
        yield
        return
    log = request.getfixturevalue("carrier").far.log
    start = log.stat().st_size if log.exists() else 0
    yield
    with open(log, "rb") as fh:
        fh.seek(start)
        problems = asterisk_log_problems(fh.read().decode(errors="replace"), request.node.nodeid)
    if problems:
        pytest.fail("the carrier's Asterisk logged:\n" + "\n".join(problems[:20]), pytrace=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("carrier")
    rng = random.Random(7)
    return {
        # the subscriber talking, room noise in the pauses, until the flash
        "talk": str(corpus.write(d / "talk.wav", corpus.conversation(rng, 20, -20))),
        "benign": str(corpus.write(d / "benign.wav", np.concatenate([
            corpus.conversation(rng, 12, -22), corpus.conversation(rng, 8, -30),
            corpus.conversation(rng, 10, -18, background=corpus.music(10000, -32)), corpus.music(8000, -20)]))),
    }


def codec_of(channel_prefix: str) -> str:
    """Our called leg's native audio format, as our Asterisk has it."""
    chans = [c for c in services.asterisk_cli("core show channels concise").splitlines()
             if c.startswith(channel_prefix)]
    assert len(chans) == 1, chans
    shown = services.asterisk_cli(f"core show channel {chans[0].split('!', 1)[0]}")
    return re.search(r"NativeFormats: \((\w+)\)", shown).group(1)


def flashed_call(ami, carrier, lines, clips, codec, **facility):
    carrier.codec(codec)
    world, call, callee, mark, _ = bridged(ami, lines, called_leg=CALLED_LEG, **facility)
    assert codec_of(CALLED_LEG) == codec
    callee.talk(clips["talk"])
    time.sleep(3)
    flash = carrier.flash(callee)
    return world, call, callee, mark, float(flash["Timestamp"])


def no_sip_event_reached_us(ami, mark):
    """The flash stayed in the switch: our AMI saw no Flash and no Hold on any channel."""
    seen = ami.events({"Event": lambda e: e in ("Flash", "Hold")}, since=mark)
    assert seen == [], seen


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_a_flash_behind_the_carrier_is_heard_in_the_audio_and_disconnects(ami, carrier, lines, clips, codec):
    world, call, callee, mark, flashed_at = flashed_call(ami, carrier, lines, clips, codec)
    rec, ev = assert_cut(ami, world, mark, "flash_sequence", "sequence_window_s=8", "ToneDetect", call, callee,
                         called_leg=CALLED_LEG)
    no_sip_event_reached_us(ami, mark)
    # the switch's dead air (A-law's idle code too), then its dial tone 0.5 s after the flash
    assert [e["signature"] for e in ev] == ["dead_air", "dial_tone"], ev
    dead, tone = ev
    assert int(dead["duration_ms"]) >= 300 and float(dead["level_dbfs"]) < -66
    tone_at = flashed_at + 0.5
    offset_s = int(tone["offset_ms"]) / 1000
    assert abs(offset_s - (tone_at - rec["bridged_ms"] / 1000)) < 0.6, (offset_s, tone_at, rec["bridged_ms"])
    assert -30 < float(tone["level_dbfs"]) < 0
    assert [(f["rule"], f["response"]) for f in fired(rec)] == [("dead_air", "flag"), ("flash_sequence", "disconnect")]
    assert fired(rec)[-1]["acted_ms"] - tone_at * 1000 < 2000, fired(rec)[-1]["acted_ms"] - tone_at * 1000
    raised = ami.events({"Event": "ICSTone"}, since=mark)
    assert raised and all(e["Channel"].startswith(CALLED_LEG) for e in raised), raised


def test_warn_behind_the_carrier_then_disconnect_on_the_next_signature(ami, carrier, lines, clips):
    world, call, callee, mark, _ = flashed_call(ami, carrier, lines, clips, "ulaw",
                                                responses="flash_sequence=warn, inband_digits=warn")
    call.wait_disconnected(30)
    rec = wait_settled(world, 20)
    acts = [(f["rule"], f["response"]) for f in fired(rec)]
    assert acts == [("dead_air", "flag"), ("flash_sequence", "warn"), ("inband_digits", "disconnect")], acts
    assert rec["reason"] == "inband_digits" and rec["rule_threshold"].endswith("; after a warning"), rec
    # the warning was played, barged into the call (ChanSpy on the inmate leg: both parties hear it)
    assert ami.events({"Event": "TestEvent", "State": "PLAYBACK", "Message": "ics/prompts/warn-threeway"}, since=mark)
    spies = ami.events({"Event": "ChanSpyStart"}, since=mark)
    assert [s["SpyeeChannel"].split("-")[0] for s in spies] == ["PJSIP/inmate1"], spies
    no_sip_event_reached_us(ami, mark)


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_benign_call_behind_the_carrier_survives(ami, carrier, lines, clips, codec):
    carrier.codec(codec)
    world, call, callee, mark, _ = bridged(ami, lines, called_leg=CALLED_LEG)
    assert codec_of(CALLED_LEG) == codec
    callee.talk(clips["benign"])
    call.talk(clips["benign"])
    time.sleep(35)
    still_up(ami, mark, call, callee)
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup" and fired(rec) == [], fired(rec)
    # watched all along: the listener set the module on our called leg, the trunk's
    started = services.log_events("ami", "tap.started", rec["call_id"])
    assert [e["detector"] for e in started] == ["module"] and started[0]["channel"].startswith(CALLED_LEG), started
