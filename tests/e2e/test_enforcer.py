"""The AMI enforcer on real Asterisk 22 with pjsua2 phones: one test per rule.

Each test bridges an accepted inmate call with the facility's rules set for it,
acts on a phone (hold, flash, transfer, silence, digits, waiting out the
limit), and asserts that the call ended (or did not), the reason code, the
rule's evidence on the call record, the prompt both legs heard ([ics-cut] in
AMI) and that billing stopped at the disconnect.
"""

import json
import math
import os
import signal
import subprocess
import time
import wave
from pathlib import Path

import pytest

from tests.support import REPO, services, stack_dir
from tests.support.callflow import NUMBER, OTHER_NUMBER, answered, login, make_world, press_when, wait_settled

pytestmark = pytest.mark.e2e

ALL_OFF = dict(rule_hold=False, rule_hook_flash=False, rule_transfer=False, rule_silence=False,
               rule_extra_digits=False)


def chan(prefix):
    return lambda c: str(c).startswith(prefix)


@pytest.fixture
def lines(stack, phones):
    inmate, family, other = phones.phone("inmate1"), phones.phone(NUMBER), phones.phone(OTHER_NUMBER)
    for p in (inmate, family, other):
        p.register(10)
        p.drain_incoming()
    return inmate, family, other


def bridged(ami, lines, called_leg=f"PJSIP/{NUMBER}", **facility):
    """An accepted, bridged inmate call under the given facility settings; called_leg: how our
    called channel's name begins (over a trunk: PJSIP/<trunk>-)."""
    world, call, callee, mark = answered(ami, lines, **facility)
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=called_leg)
    enter = ami.wait_for({"Event": "BridgeEnter", "Channel": chan(called_leg)}, 15, since=mark)
    time.sleep(1.0)  # media settles on both legs after the switch from prompts to the bridge
    return world, call, callee, mark, enter


def assert_cut(ami, world, mark, reason, threshold, evidence_event, call, callee, called_leg=f"PJSIP/{NUMBER}"):
    """Both legs heard cut-<reason> ([ics-cut]; Asterisk's test events name each file it
    plays), hung up; the record says why, on what evidence, and what it cost."""
    callee.wait_disconnected(20)
    call.wait_disconnected(20)
    rec = wait_settled(world, 20)
    assert rec["reason"] == reason, rec
    assert rec["rule"] == reason and rec["rule_threshold"] == threshold
    ev = json.loads(rec["evidence"])
    assert any(e["event"] == evidence_event for e in ev), ev
    heard = {e["Channel"].split("-")[0] for e in ami.events(
        {"Event": "TestEvent", "State": "PLAYBACK", "Message": f"ics/prompts/cut-{reason}"}, since=mark)}
    assert heard == {"PJSIP/inmate1", called_leg.rstrip("-")}, heard
    # billing stopped when the rule fired, not after the prompt
    assert rec["bridged_ms"] <= rec["cut_ms"] <= rec["ended_ms"]
    minutes = max(1, math.ceil((rec["cut_ms"] - rec["bridged_ms"]) / 60000))
    assert rec["billed_minutes"] == minutes and rec["billed_cents"] == minutes * 11
    assert world.store.account("fam1").held_cents == 0
    return rec, ev


def ruled(world, rule, timeout=10):
    """The settled record once the listener has written its rule: after a transfer
    Asterisk hangs the inmate leg up itself, and settlement may come first."""
    deadline = time.time() + timeout
    rec = wait_settled(world, 20)
    while rec.get("rule") != rule and time.time() < deadline:
        time.sleep(0.1)
        rec = wait_settled(world, 1)
    return rec


def still_up(ami, mark, *calls):
    for c in calls:
        assert c.state == "CONFIRMED", c
    assert not ami.events({"Event": "TestEvent", "State": "PLAYBACK",
                           "Message": lambda m: m.startswith("ics/prompts/cut-")}, since=mark)


def test_hold_past_grace_disconnects_with_the_hold_as_evidence(ami, lines):
    world, call, callee, mark, _ = bridged(ami, lines, hold_grace_s=1)
    callee.hold()
    rec, ev = assert_cut(ami, world, mark, "hold", "hold_grace_s=1", "Hold", call, callee)
    assert ev[0]["channel"].startswith(f"PJSIP/{NUMBER}-")


def test_unhold_within_grace_keeps_the_call(ami, lines):
    world, call, callee, mark, _ = bridged(ami, lines, hold_grace_s=4)
    callee.hold()
    ami.wait_for({"Event": "Hold", "Channel": chan(f"PJSIP/{NUMBER}")}, 5, since=mark)
    time.sleep(1)
    callee.unhold()
    ami.wait_for({"Event": "Unhold", "Channel": chan(f"PJSIP/{NUMBER}")}, 5, since=mark)
    time.sleep(5)
    still_up(ami, mark, call, callee)
    callee.hangup()
    assert wait_settled(world)["reason"] == "called_hangup"


@pytest.mark.parametrize("how", ["info", "rfc2833"])
def test_hook_flash_disconnects(ami, lines, how):
    world, call, callee, mark, _ = bridged(ami, lines)
    callee.flash_info() if how == "info" else callee.flash_rfc2833()
    assert_cut(ami, world, mark, "hook_flash", "rule_hook_flash=on", "Flash", call, callee)


def test_hook_flash_from_the_inmate_phone_disconnects(ami, lines):
    world, call, callee, mark, _ = bridged(ami, lines)
    call.flash_info()
    _, ev = assert_cut(ami, world, mark, "hook_flash", "rule_hook_flash=on", "Flash", call, callee)
    assert ev[0]["channel"].startswith("PJSIP/inmate1-")


def test_blind_transfer_disconnects(ami, lines):
    world, call, callee, mark, _ = bridged(ami, lines)
    callee.blind_transfer(OTHER_NUMBER)
    callee.wait_transfer_final(10)
    callee.hangup()  # a real phone hangs up itself after its REFER
    call.wait_disconnected(20)
    rec = ruled(world, "transfer")
    assert rec["reason"] == "transfer" and rec["rule"] == "transfer"
    ev = json.loads(rec["evidence"])
    assert ev[0]["event"] == "BlindTransfer" and ev[0]["TransfererChannel"].startswith(f"PJSIP/{NUMBER}-")
    assert rec["bridged_ms"] <= rec["cut_ms"] <= rec["ended_ms"] and rec["billed_minutes"] == 1


def test_attended_transfer_disconnects(ami, lines):
    _, family, other = lines
    world, call, callee, mark, _ = bridged(ami, lines, rule_hold=False)
    # the family phone takes a second call (from a phone outside the jail) and joins the two
    ami.action("Originate", Channel=f"PJSIP/{OTHER_NUMBER}", Application="Dial", Data=f"PJSIP/{NUMBER},20",
               CallerID=f'"x" <{OTHER_NUMBER}>', Timeout=10000, Async="true")
    leg_other = other.wait_incoming(10)
    leg_other.answer()
    second = family.wait_incoming(10)
    second.answer()
    second.wait_state("CONFIRMED", 5)
    time.sleep(0.5)
    callee.hold()
    ami.wait_for({"Event": "Hold", "Channel": chan(f"PJSIP/{NUMBER}")}, 5, since=mark)
    callee.attended_transfer(second)
    call.wait_disconnected(20)
    rec = ruled(world, "transfer")
    assert rec["reason"] == "transfer", rec
    ev = json.loads(rec["evidence"])
    assert ev[0]["event"] == "AttendedTransfer"
    leg_other.wait_disconnected(20)


def test_silence_past_the_threshold_disconnects(ami, lines):
    world, call, callee, mark, _ = bridged(ami, lines, silence_s=4)
    rec, _ = assert_cut(ami, world, mark, "silence", "silence_s=4", "BridgeEnter", call, callee)
    assert 4000 <= rec["cut_ms"] - rec["bridged_ms"] <= 9000


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """A voice-loud 440 Hz tone, 8 kHz mono 16-bit: what TALK_DETECT counts as talking."""
    path = tmp_path_factory.mktemp("audio") / "talk.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(int(12000 * math.sin(2 * math.pi * 440 * i / 8000)).to_bytes(2, "little", signed=True)
                               for i in range(8000 * 2)))
    return path


def test_talking_resets_the_silence_clock(ami, lines, speech):
    world, call, callee, mark, _ = bridged(ami, lines, silence_s=5)
    callee.talk(speech)
    ami.wait_for({"Event": "ChannelTalkingStart", "Channel": chan(f"PJSIP/{NUMBER}")}, 5, since=mark)
    time.sleep(8)  # well past silence_s, but someone is talking
    still_up(ami, mark, call, callee)
    callee.quiet()
    stop = ami.wait_for({"Event": "ChannelTalkingStop", "Channel": chan(f"PJSIP/{NUMBER}")}, 10, since=mark)
    rec, ev = assert_cut(ami, world, mark, "silence", "silence_s=5", "ChannelTalkingStop", call, callee)
    assert ev[0]["time"] == stop["Timestamp"]


@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> Path:
    """Speech (espeak-ng) 3 s on, 2 s off, 8 kHz mono 16-bit: its pauses are shorter than
    TALK_DETECT's 2.5 s silence threshold, so a talker gets one ChannelTalkingStart, no stop."""
    from pydub import AudioSegment
    from pydub.silence import detect_leading_silence

    from ics import audio
    d = tmp_path_factory.mktemp("conversation")
    said = AudioSegment.from_wav(audio.speak("I am fine, how are the kids doing at school these days", d / "s.wav"))
    said = said[detect_leading_silence(said):len(said) - detect_leading_silence(said.reverse())]
    on = (said * 4)[:3000]  # loop the words to fill 3 s exactly
    turn = on + AudioSegment.silent(2000, frame_rate=8000)
    path = d / "conversation.wav"
    (turn * 8).set_frame_rate(8000).set_channels(1).set_sample_width(2).export(path, format="wav")
    return path


@pytest.mark.parametrize("talking", [True, False], ids=["both-talk", "nobody-talks"])
def test_a_conversation_that_began_before_the_bridge_is_not_silence(ami, lines, conversation, talking):
    """Both parties talk 3 s on / 2 s off from before the called party accepts: TALK_DETECT
    (from before the bridge) reports each one start and no stop. The call is never cut for
    silence; the control, where nobody talks, is cut at silence_s."""
    inmate, family, _ = lines
    world = make_world(balance_cents=500, **dict(ALL_OFF, rule_silence=True, silence_s=6))
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.answer()
    if talking:
        call.talk(conversation)
        callee.talk(conversation)
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{NUMBER}")
    ami.wait_for({"Event": "BridgeEnter", "Channel": chan(f"PJSIP/{NUMBER}")}, 15, since=mark)
    if not talking:
        rec, _ = assert_cut(ami, world, mark, "silence", "silence_s=6", "BridgeEnter", call, callee)
        assert 6000 <= rec["cut_ms"] - rec["bridged_ms"] <= 11000
        return
    started = {e["Channel"].split("-")[0] for e in ami.events({"Event": "ChannelTalkingStart"}, since=mark)}
    assert started == {"PJSIP/inmate1", f"PJSIP/{NUMBER}"}, started  # both talked before the bridge
    time.sleep(14)  # more than twice silence_s
    still_up(ami, mark, call, callee)
    assert not ami.events({"Event": "ChannelTalkingStop"}, since=mark)  # the pauses never reach 2.5 s
    call.quiet()
    callee.quiet()
    rec, _ = assert_cut(ami, world, mark, "silence", "silence_s=6", "ChannelTalkingStop", call, callee)


def test_extra_digits_with_only_the_digits_rule_on(ami, lines):
    settings = dict(ALL_OFF, rule_extra_digits=True, digits_max=3, digits_window_s=10)
    world, call, callee, mark, enter = bridged(ami, lines, **settings)
    # no rule needing an audio hook is on, and still the bridge is not native RTP
    assert enter["BridgeTechnology"] != "native_rtp"
    for d in "123":
        callee.dtmf(d)
        time.sleep(0.4)
    ami.wait_for({"Event": "DTMFEnd", "Channel": chan(f"PJSIP/{NUMBER}"), "Digit": "3",
                  "Direction": "Received"}, 5, since=mark)
    time.sleep(1.5)
    still_up(ami, mark, call, callee)  # three digits are allowed
    callee.dtmf("4")
    _, ev = assert_cut(ami, world, mark, "extra_digits", "digits_max=3 in digits_window_s=10", "DTMFEnd",
                       call, callee)
    assert [e["Digit"] for e in ev] == ["1", "2", "3", "4"]


def test_time_limit_warns_twice_then_ends_and_bills_only_the_limit(ami, lines):
    world, call, callee, mark, enter = bridged(ami, lines, time_limit_s=60, warn_before_s="20,10",
                                               rule_silence=False)
    inmate_leg = ami.wait_for({"Event": "BridgeEnter", "Channel": chan("PJSIP/inmate1-")}, 5, since=mark)
    said = {}
    for left in ("20", "10"):
        said[left] = ami.wait_for({"Event": "Newexten", "Context": "ics-notice", "Application": "SayNumber",
                                   "AppData": left}, 60, since=mark)
        # the notice's Local channel barged into this call's inmate leg (ChanSpy), not anywhere else
        spy = ami.wait_for({"Event": "ChanSpyStart", "SpyerChannel": chan(f"Local/{left}@ics-notice")},
                           5, since=mark)
        assert spy["SpyeeChannel"] == inmate_leg["Channel"], spy
    rec, _ = assert_cut(ami, world, mark, "time_limit", "limit_s=60", "TimeLimit", call, callee)
    assert rec["cut_ms"] - rec["bridged_ms"] == 60000
    # each warning was said when it says: 20 s, then 10 s, before the end (Asterisk's event times)
    t0 = float(enter["Timestamp"])
    assert 38 <= float(said["20"]["Timestamp"]) - t0 <= 42, (said["20"]["Timestamp"], t0)
    assert 48 <= float(said["10"]["Timestamp"]) - t0 <= 52, (said["10"]["Timestamp"], t0)


def listener_pid() -> int:
    return int((stack_dir() / "run" / "ami.pid").read_text())


def test_listener_killed_mid_call_keeps_enforcing_after_restart(ami, lines):
    world, call, callee, mark, _ = bridged(ami, lines, hold_grace_s=1)
    log = stack_dir() / "log" / "ami.log"
    seen = log.stat().st_size  # an earlier listener's "rebuilt" (another test's restart) is not this one's
    pid = listener_pid()
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while services.alive(pid):  # gone (a zombie counts as gone) before stack.sh looks
        assert time.monotonic() < deadline, f"ics-ami (pid {pid}) still alive after SIGKILL"
        time.sleep(0.05)
    up = subprocess.run(["bash", str(REPO / "docker" / "stack.sh"), "up"], timeout=120,
                        capture_output=True, text=True)
    assert up.returncode == 0 and "starting ami (ics-ami)" in up.stderr, up.stderr
    def rebuilt() -> bool:
        with open(log, "rb") as fh:
            fh.seek(seen)
            return b'"rebuilt": true' in fh.read()

    deadline = time.time() + 15
    while not rebuilt() and time.time() < deadline:
        time.sleep(0.2)
    assert rebuilt(), "the restarted listener did not pick up the call"
    m2 = ami.mark()
    callee.hold()
    assert_cut(ami, world, m2, "hold", "hold_grace_s=1", "Hold", call, callee)


def test_warn_applies_to_the_existing_rules_too(ami, lines):
    """A rule's warn response (issue 11) on a SIP rule: the first flash warns, the next cuts."""
    world, call, callee, mark, _ = bridged(ami, lines, responses="hook_flash=warn")
    callee.flash_info()
    ami.wait_for({"Event": "TestEvent", "State": "PLAYBACK", "Message": "ics/prompts/warn-threeway"}, 10,
                 since=mark)
    time.sleep(1)
    still_up(ami, mark, call, callee)
    callee.flash_info()
    rec, _ = assert_cut(ami, world, mark, "hook_flash", "rule_hook_flash=on; after a warning", "Flash", call, callee)
    assert [f["response"] for f in json.loads(rec["fired"])] == ["warn", "disconnect"]
