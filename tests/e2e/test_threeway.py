"""Three-way calls made inside the carrier's switch, heard in the called leg's audio.

The called party is a pjsua2 phone behind the carrier-like far end (tests/support/carrier.py: a
second Asterisk our flow dials over a trunk). It sends what a carrier trunk carries after its
subscriber flashed: speech, then a dial tone, ringback, busy, SIT or keypad tones (PCMU), which
the switch passes on to our trunk leg. That leg's own thread in our Asterisk detects the
signature (res_ics_tonewatch, asterisk/; the listener's ICS_TONEWATCH on the leg) and raises
ICSTone; the AMI listener applies the call's response to that rule: disconnect, warn then
disconnect, or flag. Each test checks the record: the rule, its evidence (signature, offset into
the call, duration, level), and the `fired` list of what was done. (The switch's own flash, and
A-law: tests/e2e/test_carrier.py; a hook flash that reaches us as SIP: test_enforcer.py.)
"""

import json
import random
import time

import numpy as np
import pytest

from bench.threeway import corpus
from ics import keys
from tests.e2e.test_policy import icsctl
from tests.e2e.test_carrier import _carrier_log, carrier, fired, lines  # noqa: F401 (fixtures: the switch, its line, its log)
from tests.e2e.test_enforcer import assert_cut, bridged, still_up
from tests.support.callflow import NUMBER, answered, press_when, wait_settled
from tests.support.carrier import CALLED_LEG

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Speech (2-3 s, room noise), then each signature, then room noise."""
    d = tmp_path_factory.mktemp("threeway")
    rng = random.Random(11)
    lead = np.concatenate([corpus.speech(corpus.SENTENCES[0], "en-us", -20), corpus.silence(300)])
    out = {"lead_s": len(lead) / corpus.RATE}
    bodies = {
        "dial_tone": corpus.tone((350, 440), 4000),
        "ringback": corpus.cadence((440, 480), 2000, 4000, 6000),
        "busy": corpus.cadence((480, 620), 500, 500, 4000),
        "sit": np.concatenate([corpus.sit(), corpus.sit()]),
        "inband_digits": corpus.dtmf("18005551212"),
        # the carrier's flash: dead air, then the dial tone
        "flash_sequence": np.concatenate([corpus.silence(500, None), corpus.tone((350, 440), 3000)]),
    }
    for name, body in bodies.items():
        out[name] = str(corpus.write(d / f"{name}.wav", np.concatenate([lead, body, corpus.silence(20000)])))
    # a dial tone, then talk: on the loop the tone comes back just after the rule re-arms (10 s)
    talk = corpus.conversation(rng, 7, -20)
    out["dial_twice"] = str(corpus.write(d / "dial_twice.wav",
                                         np.concatenate([lead, corpus.tone((350, 440), 1500), talk])))
    return out


THRESHOLDS = {
    "dial_tone": "dial_tone_ms=800 plan=na", "ringback": "ringback_ms=800 plan=na",
    "busy": "busy_bursts=2 plan=na", "sit": "sit=3 segments",
    "inband_digits": "inband_digits_max=6 in digits_window_s=10",
}


@pytest.mark.parametrize("signature", list(THRESHOLDS))
def test_each_signature_on_the_called_line_disconnects_with_its_evidence(ami, lines, clips, signature):
    world, call, callee, mark, _ = bridged(ami, lines, called_leg=CALLED_LEG, rule_extra_digits=False)
    started = time.time()
    callee.talk(clips[signature])
    rec, ev = assert_cut(ami, world, mark, signature, THRESHOLDS[signature], "ToneDetect", call, callee,
                         called_leg=CALLED_LEG)
    tones = [e for e in ev if e["event"] == "ToneDetect"]
    wanted = "digits" if signature == "inband_digits" else signature
    assert tones and all(e["signature"] == wanted for e in tones), ev
    assert len(tones) == (7 if signature == "inband_digits" else 1)
    # offset into the call: the signature began when the clip's lead ended (plus the 1 s after the bridge)
    offset_s = int(tones[0]["offset_ms"]) / 1000
    assert abs(offset_s - ((started - rec["bridged_ms"] / 1000) + clips["lead_s"])) < 0.6, (offset_s, rec)
    assert int(tones[0]["duration_ms"]) > 0 and -30 < float(tones[0]["level_dbfs"]) < 0
    if signature in ("dial_tone", "ringback"):  # caught within 2 s of the tone's real onset, by the wall clock
        onset_ms = (started + clips["lead_s"]) * 1000
        acted = fired(rec)[0]["acted_ms"]
        assert acted - onset_ms < 2000, acted - onset_ms
    # detected in Asterisk, in the called leg's own thread (res_ics_tonewatch): its event, on that leg
    raised = ami.events({"Event": "ICSTone", "Signature": wanted}, since=mark)
    assert raised and all(e["Channel"].startswith(CALLED_LEG) for e in raised), raised
    assert [(f["rule"], f["response"]) for f in fired(rec)] == [(signature, "disconnect")]
    assert json.loads(rec["responses"])[signature] == "disconnect"


def test_dead_air_then_dial_tone_is_a_flash_sequence(ami, lines, clips):
    world, call, callee, mark, _ = bridged(ami, lines, called_leg=CALLED_LEG)
    callee.talk(clips["flash_sequence"])
    rec, ev = assert_cut(ami, world, mark, "flash_sequence", "sequence_window_s=8", "ToneDetect", call, callee,
                         called_leg=CALLED_LEG)
    assert [e["signature"] for e in ev] == ["dead_air", "dial_tone"], ev
    assert int(ev[0]["duration_ms"]) >= 300 and float(ev[0]["level_dbfs"]) < -66


def test_warn_then_disconnect_on_the_next(ami, lines, clips):
    world, call, callee, mark, _ = bridged(ami, lines, called_leg=CALLED_LEG, responses="dial_tone=warn")
    callee.talk(clips["dial_twice"])
    ami.wait_for({"Event": "TestEvent", "State": "PLAYBACK", "Message": "ics/prompts/warn-threeway"}, 10,
                 since=mark)
    still_up(ami, mark, call, callee)
    rec, ev = assert_cut(ami, world, mark, "dial_tone", "dial_tone_ms=800 plan=na; after a warning",
                         "ToneDetect", call, callee, called_leg=CALLED_LEG)
    assert [(f["rule"], f["response"]) for f in fired(rec)] == [("dial_tone", "warn"), ("dial_tone", "disconnect")]
    alerts = world.store.r.xrange(keys.ALERTS)
    assert [(a["rule"], a["response"], a["call"]) for _, a in alerts] == [("dial_tone", "warn", rec["call_id"])]


def test_flag_lets_the_call_go_on_and_alerts_investigators(ami, lines, clips):
    world, call, callee, mark, _ = bridged(ami, lines, called_leg=CALLED_LEG, responses="dial_tone=flag")
    callee.talk(clips["dial_tone"])
    deadline = time.time() + 10
    while time.time() < deadline and not world.store.r.xlen(keys.ALERTS):
        time.sleep(0.2)
    time.sleep(2)
    still_up(ami, mark, call, callee)
    (_, alert), = world.store.r.xrange(keys.ALERTS)
    assert alert["rule"] == "dial_tone" and alert["response"] == "flag" and alert["number"] == "+1" + NUMBER
    assert json.loads(alert["evidence"])[0]["signature"] == "dial_tone"
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup" and not rec.get("rule")
    assert [(f["rule"], f["response"]) for f in fired(rec)] == [("dial_tone", "flag")]


def test_a_number_overrides_its_facility(ami, lines, clips):
    """An attorney's PBX plays ringback-like hold tones: the facility disconnects on ringback,
    this number only flags it (set before the called party accepts, as ops would)."""
    world, call, callee, mark = answered(ami, lines)
    rc, said = icsctl("number", "rules", NUMBER, "--set", "ringback=flag")
    assert rc == 0 and "ringback=flag" in said, said
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=CALLED_LEG)
    ami.wait_for({"Event": "BridgeEnter", "Channel": lambda c: c.startswith(CALLED_LEG)}, 15, since=mark)
    time.sleep(1.0)
    callee.talk(clips["ringback"])
    time.sleep(8)
    still_up(ami, mark, call, callee)
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup"
    assert json.loads(rec["responses"])["ringback"] == "flag"
    assert json.loads(rec["responses"])["dial_tone"] == "disconnect"   # the facility's, untouched
    assert [(f["rule"], f["response"]) for f in fired(rec)] == [("ringback", "flag")]
    rc, shown = icsctl("calls", "show", rec["call_id"])
    assert rc == 0 and "ringback -> flag" in shown and "signature=ringback" in shown, shown
