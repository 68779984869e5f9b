"""The tone detector (ami/tones.py) on synthesised carrier tones, and the rules' responses
(ami/rules.py): disconnect, warn then disconnect, flag, off, per facility, number and call."""

import numpy as np
import pytest

from ami.rules import LiveCall, Policy
from ami.tones import Detection, Detector, Thresholds
from bench.threeway import corpus
from ics import config


def detect(x, plan="na"):
    d = Detector(Thresholds(plan=plan))
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return [det for i in range(0, len(pcm), 1600) for det in d.feed(pcm[i:i + 1600])]


def noise(ms, dbfs=-30):
    return np.random.default_rng(1).standard_normal(8 * ms) * 10 ** (dbfs / 20)


@pytest.mark.parametrize("plan,body,signature", [
    ("na", corpus.tone((350, 440), 3000), "dial_tone"),
    ("na", corpus.cadence((440, 480), 2000, 4000, 6000), "ringback"),
    ("na", corpus.cadence((480, 620), 500, 500, 4000), "busy"),
    ("na", corpus.cadence((480, 620), 250, 250, 3000), "busy"),
    ("na", np.concatenate([corpus.sit(), corpus.silence(500, None)]), "sit"),
    ("eu", corpus.tone((425,), 3000), "dial_tone"),
    ("eu", np.concatenate([corpus.cadence((425,), 1000, 4000, 5000)]), "ringback"),
    ("eu", corpus.cadence((425,), 500, 500, 4000), "busy"),
])
def test_each_signature_after_speech(plan, body, signature):
    found = detect(np.concatenate([noise(1500), body]), plan)
    assert found and found[0].signature == signature, found
    assert abs(found[0].onset_ms - 1500) <= 75, found[0]


def test_a_425_hz_dial_tone_is_not_a_ringback_nor_a_na_tone():
    eu = corpus.tone((425,), 3000)
    assert [d.signature for d in detect(eu, "eu")] == ["dial_tone"]
    assert detect(eu, "na") == []


def test_digits_dead_air_and_what_is_not():
    assert "".join(d.detail for d in detect(corpus.dtmf("5551234")) if d.signature == "digits") == "5551234"
    drop = detect(np.concatenate([noise(1000), corpus.silence(600, None), noise(500)]))
    assert [d.signature for d in drop] == ["dead_air"] and drop[0].level_dbfs < -70
    # an A-law trunk's digital silence: the idle code decodes to +-8, not 0
    alaw_idle = np.resize([8 / 32767, -8 / 32767], 8 * 600)
    drop = detect(np.concatenate([noise(1000), alaw_idle, noise(500)]))
    assert [d.signature for d in drop] == ["dead_air"] and drop[0].level_dbfs < -66
    # a speech pause keeps the room's noise; music is chords with harmonics
    assert detect(np.concatenate([noise(1000), corpus.silence(2000, -62), noise(1000)])) == []
    assert detect(corpus.music(10000, -18)) == []


def call(**facility):
    f = dict(config.DEFAULTS["facility_defaults"], **facility)
    c = LiveCall("L", call_id="C", policy=Policy.from_facility(f))
    c.start(now=0.0)
    return c


def dial(at_ms=0):
    return Detection("dial_tone", at_ms, 800, -13.0)


def test_disconnect_warn_flag_off():
    assert call().detected(dial(), 1000).response == "disconnect"
    warned = call(responses="dial_tone=warn")
    assert warned.detected(dial(), 1000).response == "warn" and warned.cut is None
    assert warned.detected(dial(), 5000) is None            # the same tone: re-armed after 10 s
    second = warned.detected(dial(), 12000)
    assert second.response == "disconnect" and second.threshold.endswith("after a warning")
    assert warned.cut is second
    flagged = call(responses="dial_tone=flag")
    assert flagged.detected(dial(), 1000).response == "flag" and flagged.detected(dial(), 12000).response == "flag"
    assert call(responses="dial_tone=off").detected(dial(), 1000) is None


def test_a_warning_from_one_rule_makes_the_next_rule_disconnect():
    c = call(responses="hook_flash=warn, dial_tone=warn")
    assert c.observe({"Event": "Flash", "Channel": "X", "Timestamp": "1.0"}) is None  # not a leg of the call
    c.channels["X"] = "1"
    assert c.observe({"Event": "Flash", "Channel": "X", "Timestamp": "1.0"}).response == "warn"
    assert c.detected(dial(), 1000).response == "disconnect"


def test_overrides_number_then_call():
    c = call(responses="ringback=warn")
    c.overrides = {"ringback": "flag", "silence": "off"}
    assert c.response("ringback") == "flag" and c.response("silence") == "off"
    assert c.effective()["dial_tone"] == "disconnect" and c.effective()["dead_air"] == "flag"
    assert call(rule_silence=False).response("silence") == "off"   # the old switch still turns it off


def test_dead_air_then_tone_is_one_flash_sequence_with_the_whole_sequence():
    c = call()
    drop = c.detected(Detection("dead_air", 0, 300, -143.0), 500)
    assert drop.reason == "dead_air" and drop.response == "flag"
    seq = c.detected(dial(800), 2000)
    assert seq.reason == "flash_sequence" and seq.response == "disconnect"
    assert [e["signature"] for e in seq.events] == ["dead_air", "dial_tone"]
    late = call()
    late.detected(Detection("dead_air", 0, 300, -143.0), 500)
    assert late.detected(dial(), 500 + 9000).reason == "dial_tone"  # past sequence_window_s (8)


def test_bad_responses_stop_start_up():
    with pytest.raises(ValueError, match="rule=response"):
        config.parse_responses("dial_tone=maybe")
    with pytest.raises(ValueError):
        config.parse_responses("dialtone=flag")
    assert config.parse_responses(" hold=warn; sit=off ") == {"hold": "warn", "sit": "off"}
