"""The disconnect rules as pure decisions: events and clock in, a Cut (or not) out."""

import time

import pytest

from ami.rules import LiveCall, Policy
from ics import config

INMATE, CALLED, OTHER = "PJSIP/inmate1-00000001", "PJSIP/3125550100-00000002", "PJSIP/3125550101-00000009"


def live(**policy) -> LiveCall:
    call = LiveCall("1.1", call_id="c1", inmate=INMATE, channels={INMATE: "1.1", CALLED: "1.2"},
                    bridge="b1", policy=Policy(**policy))
    call.start(now=0.0, event={"Event": "BridgeEnter", "Channel": CALLED, "Timestamp": "100.0"})
    return call


def ev(name, chan=CALLED, **headers):
    return {"Event": name, "Channel": chan, "Timestamp": "1.0", **headers}


def test_nothing_applies_before_the_bridge():
    call = LiveCall("1.1", call_id="c1", inmate=INMATE, channels={INMATE: "1.1", CALLED: "1.2"})
    assert call.observe(ev("Flash"), now=1) is None
    assert call.tick(now=999, wall_ms=10**13) == (None, [])


def test_hold_cuts_after_the_grace_unless_undone():
    call = live(hold_grace_s=3)
    assert call.observe(ev("Hold", MusicClass="default"), now=10) is None
    assert call.tick(now=12.9)[0] is None
    call.observe(ev("Unhold"), now=12.95)
    assert call.tick(now=20)[0] is None
    call.observe(ev("Hold", chan=INMATE), now=30)
    cut = call.tick(now=33)[0]
    assert cut.reason == "hold" and cut.threshold == "hold_grace_s=3"
    assert cut.events[0]["channel"] == INMATE and cut.events[0]["event"] == "Hold"


def test_hold_without_grace_cuts_at_once_and_a_rule_off_never_cuts():
    assert live(hold_grace_s=0).observe(ev("Hold"), now=1).reason == "hold"
    off = live(hold=False, silence=False)
    off.observe(ev("Hold"), now=1)
    assert off.tick(now=1000)[0] is None


@pytest.mark.parametrize("chan", [INMATE, CALLED])
def test_flash_on_either_leg(chan):
    assert live().observe(ev("Flash", chan=chan), now=1).reason == "hook_flash"
    assert live(hook_flash=False).observe(ev("Flash", chan=chan), now=1) is None


def test_a_flash_on_some_other_call_is_not_this_calls_business():
    assert live().observe(ev("Flash", chan=OTHER), now=1) is None


def test_transfers_touching_a_leg_and_third_parties():
    call = live()
    assert call.observe(ev("BlindTransfer", chan="", TransfererChannel=OTHER, TransfereeChannel="X"), 1) is None
    cut = call.observe(ev("BlindTransfer", chan="", TransfererChannel=CALLED, TransfereeChannel=INMATE,
                          Extension="3125550109"), 1)
    assert cut.reason == "transfer" and cut.events[0]["Extension"] == "3125550109"
    assert cut.at_ms == 1000  # billing stops when Asterisk raised the event, not when it was read
    assert live().observe(ev("AttendedTransfer", chan="", OrigTransfererChannel=CALLED), 1).reason == "transfer"
    assert live().observe(ev("BridgeEnter", chan=OTHER, BridgeUniqueid="b1", BridgeNumChannels="3"), 1).reason \
        == "conference"
    assert live().observe(ev("Newchannel", chan="PJSIP/3125550109-0000000a", Exten="3125550109"), 1).reason \
        == "conference"
    assert live().observe(ev("ConfbridgeJoin", chan=CALLED, Conference="1"), 1).reason == "conference"
    assert live(transfer=False).observe(ev("BlindTransfer", chan="", TransfererChannel=CALLED), 1) is None


def test_digits_from_the_called_side_within_the_window():
    call = live(digits_max=3, digits_window_s=10)
    for t in (1, 2, 3):
        assert call.observe(ev("DTMFEnd", Digit=str(t), Direction="Received"), now=t) is None
    # the inmate's digits and the Sent copies on the other leg do not count
    assert call.observe(ev("DTMFEnd", chan=INMATE, Digit="5", Direction="Received"), now=3.5) is None
    assert call.observe(ev("DTMFEnd", Digit="5", Direction="Sent"), now=3.6) is None
    cut = call.observe(ev("DTMFEnd", Digit="4", Direction="Received"), now=4)
    assert cut.reason == "extra_digits" and [e["Digit"] for e in cut.events] == ["1", "2", "3", "4"]


def test_digits_spread_out_never_cut():
    call = live(digits_max=3, digits_window_s=10)
    for t in range(0, 100, 4):
        assert call.observe(ev("DTMFEnd", Digit="1", Direction="Received"), now=t) is None


def test_silence_counts_from_the_last_talking_change():
    call = live(silence_s=30)
    call.observe(ev("ChannelTalkingStart"), now=5)
    assert call.tick(now=100)[0] is None  # someone is talking
    call.observe(ev("ChannelTalkingStop", Duration="95000"), now=100)
    assert call.tick(now=129.9)[0] is None
    cut = call.tick(now=130)[0]
    assert cut.reason == "silence" and cut.events[0]["event"] == "ChannelTalkingStop"


def unbridged() -> LiveCall:
    return LiveCall("1.1", call_id="c1", inmate=INMATE, channels={INMATE: "1.1", CALLED: "1.2"},
                    bridge="b1", policy=Policy(silence_s=30))


@pytest.mark.parametrize("chan", [INMATE, CALLED])
def test_talking_that_began_before_the_bridge_counts_as_talking(chan):
    """TALK_DETECT runs from before the bridge; with pauses under its 2.5 s threshold it
    reports one start and no stop, so a leg talking at the bridge is talking after it."""
    call = unbridged()
    assert call.observe(ev("ChannelTalkingStart", chan), now=1) is None
    call.start(now=10.0, event={"Event": "BridgeEnter", "Channel": CALLED, "Timestamp": "10.0"})
    assert call.tick(now=500)[0] is None  # still talking, never a silence cut
    call.observe(ev("ChannelTalkingStop", chan, Duration="490000"), now=500)
    assert call.tick(now=529.9)[0] is None
    assert call.tick(now=530)[0].reason == "silence"


def test_talk_that_stopped_before_the_bridge_does_not_count():
    call = unbridged()
    call.observe(ev("ChannelTalkingStart", INMATE), now=1)
    call.observe(ev("ChannelTalkingStop", INMATE, Duration="2000"), now=3)
    call.start(now=10.0, event={"Event": "BridgeEnter", "Channel": CALLED, "Timestamp": "10.0"})
    assert call.tick(now=39.9)[0] is None
    cut = call.tick(now=40)[0]
    assert cut.reason == "silence" and cut.events[0]["event"] == "BridgeEnter"  # quiet since the bridge


def test_time_limit_warnings_then_the_cut_at_the_limit():
    call = live(silence=False, warn_before_s=(60, 30))
    call.bridged_ms, call.limit_ms = 1_000_000, 900_000
    end = 1_900_000
    assert call.tick(now=1, wall_ms=end - 60_001) == (None, [])
    assert call.tick(now=1, wall_ms=end - 60_000) == (None, [60])
    assert call.tick(now=1, wall_ms=end - 45_000) == (None, [])
    assert call.tick(now=1, wall_ms=end - 30_000) == (None, [30])
    cut, _ = call.tick(now=1, wall_ms=end)
    assert cut.reason == "time_limit" and cut.at_ms == end and cut.threshold == "limit_s=900"


def test_after_a_restart_past_warnings_are_not_replayed():
    call = live(silence=False, warn_before_s=(60, 30))
    call.bridged_ms, call.limit_ms = 10**6, 900_000
    end = 10**6 + 900_000
    call.skip_past_warnings(end - 40_000)
    assert call.tick(now=1, wall_ms=end - 40_000) == (None, [])
    assert call.tick(now=1, wall_ms=end - 30_000) == (None, [30])


def test_a_warning_longer_than_the_call_is_not_said():
    call = live(silence=False, warn_before_s=(60, 30))
    call.bridged_ms, call.limit_ms = 10**6, 60_000
    assert call.tick(now=1, wall_ms=10**6) == (None, [])
    assert call.tick(now=1, wall_ms=10**6 + 30_000) == (None, [30])


def test_one_cut_per_call():
    call = live()
    assert call.observe(ev("Flash"), now=1) is not None
    assert call.observe(ev("Flash"), now=2) is None
    assert call.tick(now=1000)[0] is None


def test_policy_from_the_facility_settings_and_bad_values_refused():
    cfg = config.load(environ={})
    p = Policy.from_facility(cfg["facility_defaults"])
    assert (p.hold_grace_s, p.silence_s, p.digits_max, p.digits_window_s, p.warn_before_s) == (3, 30, 3, 10, (60, 30))
    for env, msg in ({"ICS_FACILITY_DEFAULTS_WARN_BEFORE_S": "60,x"}, "warn_before_s"), \
                    ({"ICS_FACILITY_DEFAULTS_SILENCE_S": "0"}, "silence_s"), \
                    ({"ICS_FACILITY_DEFAULTS_RULE_HOLD": "maybe"}, "rule_hold"), \
                    ({"ICS_FACILITY_DEFAULTS_HOLD_GRACE_S": "-1"}, "hold_grace_s"):
        with pytest.raises(config.ConfigError, match=msg):
            config.load(environ=env)


def test_an_event_cut_without_a_timestamp_falls_back_to_the_wall_clock():
    before = int(time.time() * 1000)
    cut = live().observe({"Event": "Flash", "Channel": CALLED}, 1)
    assert cut.reason == "hook_flash" and before <= cut.at_ms <= int(time.time() * 1000)
