"""Facility policy end to end: real Asterisk 22, Redis and pjsua2 phones.

Who may call whom and when (schedules, lockdown, status, quotas, destinations,
approval states), recording and privileged calls, the in-call notice, caller ID,
and investigators' monitoring and cut-off with their audit trail.
"""

from __future__ import annotations

import array
import contextlib
import io
import time
import wave
from datetime import datetime, timezone

import pytest
import structlog

from ics import audio, cli, policy, recordings, records

from tests.support import seed_week, services
from tests.support.callflow import INMATE, NUMBER, agi_command, login, make_world, press_when, wait_settled

pytestmark = pytest.mark.e2e

CALLER_ID = "3125550000"
FAMILY = f"PJSIP/{NUMBER}"


@pytest.fixture
def lines(stack, phones):
    inmate = phones.phone("inmate1")
    family = phones.phone(NUMBER)
    for p in (inmate, family):
        p.register(10)
    return inmate, family


def icsctl(*args: str) -> tuple[int, str]:
    """icsctl in this process (stack.env is in os.environ): exit status and stdout."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = cli.main(list(args))
    finally:
        structlog.reset_defaults()  # main() configured logging for itself; later tests need theirs
    return rc, buf.getvalue()


def bridge_entered(prefix: str):
    return lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(prefix)


def connect(ami, inmate, family):
    """Place, answer and accept a call; returns (inmate call, called-party call, mark)."""
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.answer()
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=FAMILY)
    ami.wait_for(bridge_entered(FAMILY), 10, since=mark)
    return call, callee, mark


def current_call_id(world) -> str:
    return records.recent(world.store.r, 1)[0]["call_id"]


def loud_spans(path, threshold: int = 500, window_ms: int = 100) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of the stretches of a 16-bit WAV whose RMS is above threshold."""
    with wave.open(str(path)) as w:
        rate, width = w.getframerate(), w.getsampwidth()
        assert width == 2, f"{path}: {width * 8}-bit audio"
        samples = array.array("h", w.readframes(w.getnframes()))
    step = rate * window_ms // 1000
    spans: list[tuple[int, int]] = []
    for i in range(0, len(samples), step):
        chunk = samples[i:i + step]
        rms = (sum(x * x for x in chunk) / max(1, len(chunk))) ** 0.5
        if rms > threshold:
            start = i * 1000 // rate
            if spans and spans[-1][1] >= start:
                spans[-1] = (spans[-1][0], start + window_ms)
            else:
                spans.append((start, start + window_ms))
    return spans


# --- who may call whom, when --------------------------------------------------------------

def _weeks_from_now(minutes: int = 10) -> set[str]:
    """The ISO week (UTC) now and minutes from now: a test seeds usage in both, so a call that
    starts after Sunday midnight still finds it."""
    now = int(time.time() * 1000)
    return {policy.week_of(now, "UTC"), policy.week_of(now + minutes * 60_000, "UTC")}


def _other_day() -> str:
    return policy.DAYS[(datetime.now(timezone.utc).weekday() + 3) % 7]


def _setup(case: str, world) -> str:
    """Put the world in the state of one refusal case; returns the number to dial."""
    store = world.store
    if case == "outside_schedule":
        # the facility allows any time; the inmate's unit only allows another day
        store.create_unit("main", "B-east", "B East", f"{_other_day()} 00:00-24:00")
        store.set_inmate_unit(INMATE, "B-east")
    elif case == "lockdown":
        store.create_unit("main", "B-east", "B East")
        store.set_inmate_unit(INMATE, "B-east")
        assert icsctl("lockdown", "on", "--facility", "main", "--unit", "B-east", "--by", "Lt. Cho")[0] == 0
    elif case == "inmate_suspended":
        store.set_inmate_status(INMATE, "suspended")
    elif case == "quota_exhausted":
        store.set_inmate_status(INMATE, "restricted", quota_calls_week=2)
        for week in _weeks_from_now():
            seed_week(store, INMATE, week, 2, 4)
    elif case == "approval_pending":
        store.remove_number(INMATE, NUMBER)
        store.set_number_state(INMATE, NUMBER, "pending")
    # toll-free and premium in their 011-1 form (the cases: the same numbers as 1-800, 1-900)
    return {"toll_free_not_allowed": "01118005551234", "premium_not_allowed": "01119005551234",
            "short_code_not_allowed": "411", "invalid_number": "3120550100",
            "emergency_not_allowed": "911"}.get(case, NUMBER)


@pytest.mark.parametrize("case", ["outside_schedule", "lockdown", "inmate_suspended", "quota_exhausted",
                                  "approval_pending", "toll_free_not_allowed", "premium_not_allowed",
                                  "short_code_not_allowed", "invalid_number", "emergency_not_allowed"])
def test_policy_refuses_before_anything_rings(ami, lines, case):
    inmate, _ = lines
    world = make_world(balance_cents=500)
    number = _setup(case, world)
    mark = ami.mark()
    call = inmate.call(number)
    if case != "emergency_not_allowed":  # 911 is told where help is before any PIN
        login(ami, call, mark)
    call.wait_disconnected(30)
    rec = wait_settled(world)
    assert rec["reason"] == case
    assert rec["billed_cents"] == 0 and world.store.account("fam1").held_cents == 0
    # the inmate heard why, and no outside channel was ever created
    assert ami.events(agi_command(f"prompts/{case.replace('_', '-')}"), since=mark)
    assert not [e for e in ami.events(lambda e: e.get("Event") == "Newchannel", since=mark)
                if not e.get("Channel", "").startswith("PJSIP/inmate1")]


def test_schedule_window_that_includes_now_lets_the_call_through(ami, lines):
    inmate, family = lines
    world = make_world(balance_cents=500, timezone="America/Chicago",
                       schedule="daily 00:00-24:00")
    call, callee, _ = connect(ami, inmate, family)
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup" and rec["billed_minutes"] == 1


def test_lockdown_ends_live_calls_with_a_prompt_then_refuses_new_ones(ami, lines):
    inmate, family = lines
    world = make_world(balance_cents=500)
    call, callee, _ = connect(ami, inmate, family)
    m = ami.mark()
    rc, out = icsctl("lockdown", "on", "--facility", "main", "--by", "Warden Ames", "--end-live",
                     "--note", "count")
    assert rc == 0 and "live calls ended: 1" in out, out
    call.wait_disconnected(20)
    callee.wait_disconnected(20)
    rec = wait_settled(world)
    assert rec["reason"] == "lockdown_ended" and rec["billed_minutes"] == 1
    # why and when it was cut are on the record; the prompt after that is not billed
    assert rec["rule"] == "lockdown_ended" and "--end-live" in rec["rule_threshold"]
    assert rec["bridged_ms"] <= rec["cut_ms"] <= rec["ended_ms"]
    # both parties heard why ([ics-cut]; Asterisk's test events name each file it played)
    heard = {e["Channel"].split("-")[0] for e in ami.events(
        {"Event": "TestEvent", "State": "PLAYBACK", "Message": "ics/prompts/cut-lockdown_ended"}, since=m)}
    assert heard == {"PJSIP/inmate1", FAMILY}
    actions = [e["action"] for e in world.store.audit_entries()]
    assert actions == ["lockdown_on", "lockdown_end_call"]

    mark = ami.mark()
    call2 = inmate.call(NUMBER)
    login(ami, call2, mark)
    call2.wait_disconnected(30)
    assert wait_settled(world)["reason"] == "lockdown"
    assert icsctl("lockdown", "off", "--facility", "main", "--by", "Warden Ames")[0] == 0


def test_quota_minutes_cap_the_time_limit_and_count_once(ami, lines):
    inmate, family = lines
    world = make_world(balance_cents=500)
    world.store.set_inmate_status(INMATE, "restricted", quota_minutes_week=10)
    for week in _weeks_from_now():
        seed_week(world.store, INMATE, week, 1, 8)  # 2 minutes left this week
    call, callee, _ = connect(ami, inmate, family)
    call.hangup()
    rec = wait_settled(world)
    assert rec["limit_s"] == 120
    # counted once, in the week the call started
    assert world.store.week_usage(INMATE, policy.week_of(int(rec["started_ms"]), "UTC")) == (2, 9)


# --- recording, notice, caller ID ------------------------------------------------------------

def test_recorded_call_file_notice_to_called_party_and_caller_id(ami, lines, tmp_path):
    inmate, family = lines
    world = make_world(balance_cents=500, notice_interval_s=15, caller_id=CALLER_ID)
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    # the called phone sees the facility's caller ID, never the handset's
    assert f"sip:{CALLER_ID}@" in callee.remote_uri and "Demo County Jail" in callee.remote_uri
    assert "inmate1" not in callee.remote_uri
    callee.answer()
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=FAMILY)
    ami.wait_for(bridge_entered(FAMILY), 10, since=mark)
    callee.record_audio(tmp_path / "called.wav")
    call.record_audio(tmp_path / "inmate.wav")
    time.sleep(19)
    callee.stop_recording()
    call.stop_recording()
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup"

    # the notice: heard by the called party about 15 s into the bridge, not by the inmate
    for side in ("called", "inmate"):  # both phones really recorded the whole bridge
        assert audio.duration_ms(tmp_path / f"{side}.wav") >= 15_000, side
    heard = loud_spans(tmp_path / "called.wav")
    assert any(13_000 <= start <= 17_500 and end - start >= 1000 for start, end in heard), heard
    assert not loud_spans(tmp_path / "inmate.wav")
    # ... and AMI saw Asterisk play the notice file on the called channel only
    notices = ami.events({"Event": "TestEvent", "State": "PLAYBACK",
                          "Message": "ics/prompts/facility-notice"}, since=mark)
    assert notices and {e["Channel"].split("-")[0] for e in notices} == {FAMILY}, notices
    # recorded by ics-recorder (recordings.method "capture", the default), not inside Asterisk
    assert services.log_events("recorder", "recorder.started", rec["call_id"])
    assert not ami.events({"Event": "MixMonitorStart"}, since=mark)

    # the recording: filed by facility/inmate/date with the call id, as long as the bridge
    # dated by the flow between the call's start and its bridge (not by when this test looks)
    days = {policy.local_date(int(rec[k]), "UTC") for k in ("started_ms", "bridged_ms")}
    assert rec["recording"] in {f"ics/main/{INMATE}/{day}/{rec['call_id']}.wav" for day in days}, rec
    path = world.cfg.recordings_dir / rec["recording"]
    deadline = time.time() + 10  # written whole once the call has ended
    while time.time() < deadline and not (recordings.measure(path) and recordings.measure(path).final):
        time.sleep(0.2)
    bridged_ms = rec["ended_ms"] - rec["bridged_ms"]
    length = audio.duration_ms(path)
    assert abs(length - bridged_ms) < 1500, (length, bridged_ms)
    assert [s for s in loud_spans(path) if 13_000 <= s[0] <= 17_500], "the notice is in the recording"
    rc, out = icsctl("calls", "show", rec["call_id"])
    assert rc == 0 and str(path) in out and f"({length / 1000:.1f} s)" in out


def test_privileged_call_is_never_recorded_announced_as_such_or_monitored(ami, lines, phones):
    inmate, family = lines
    investigator = phones.phone("investigator1")
    investigator.register(10)
    world = make_world(balance_cents=500)
    assert icsctl("privileged", "add", NUMBER, "--note", "Attorney J. Smith, bar 12345")[0] == 0
    call, callee, mark = connect(ami, inmate, family)
    call_id = current_call_id(world)
    rec = records.get(world.store.r, call_id)
    assert rec["privileged"] == "1" and "recording" not in rec
    assert not ami.events(agi_command("announce-recorded", FAMILY), since=mark)
    assert ami.events(agi_command("announce-at", FAMILY), since=mark)

    rc, _ = icsctl("monitor", "start", call_id, "--phone", "investigator1", "--by", "Det. Ray")
    assert rc == 1
    rc, _ = icsctl("monitor", "cut", call_id, "--by", "Det. Ray")
    assert rc == 1
    assert [(e["action"], e["by"]) for e in world.store.audit_entries(call_id)] == [
        ("monitor_refused", "Det. Ray"), ("cut_off_refused", "Det. Ray")]
    time.sleep(1)
    assert not ami.events(lambda e: e.get("Event") in ("MixMonitorStart", "ChanSpyStart"), since=mark)
    assert not ami.events(lambda e: e.get("Event") == "Newchannel"
                          and e.get("Channel", "").startswith("PJSIP/investigator1"), since=mark)
    chans = ami.action("CoreShowChannels")["_events"]
    assert not [c for c in chans if c.get("Application") in ("ChanSpy", "MixMonitor")]
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup"
    time.sleep(1)
    assert not list(world.cfg.recordings_dir.rglob(f"*{call_id}*"))
    assert not services.log_events("recorder", "recorder.started", call_id)  # nothing captured either


# --- investigators ----------------------------------------------------------------------------

def test_investigator_listens_stops_and_cuts_off_every_step_audited(ami, lines, phones):
    inmate, family = lines
    investigator = phones.phone("investigator1")
    investigator.register(10)
    world = make_world(balance_cents=500)
    call, callee, mark = connect(ami, inmate, family)
    call_id = current_call_id(world)

    rc, out = icsctl("monitor", "start", call_id, "--phone", "investigator1", "--by", "Det. Ray")
    assert rc == 0, out
    monitor_id = out.split()[1].rstrip(":")
    spy = investigator.wait_incoming(10)
    spy.answer()
    started = ami.wait_for(lambda e: e.get("Event") == "ChanSpyStart"
                            and not e.get("SpyerChannel", "").startswith("AudioSocket/"), 10, since=mark)
    assert started["SpyeeChannel"].startswith("PJSIP/inmate1")
    assert started["SpyerChannel"].startswith("PJSIP/investigator1")

    assert icsctl("monitor", "stop", monitor_id, "--by", "Det. Ray")[0] == 0
    spy.wait_disconnected(10)
    assert call.state == "CONFIRMED" and callee.state == "CONFIRMED"  # listening changed nothing

    assert icsctl("monitor", "cut", call_id, "--by", "Lt. Cho")[0] == 0
    call.wait_disconnected(10)
    callee.wait_disconnected(10)
    rec = wait_settled(world)
    assert rec["reason"] == "cut_off" and rec["billed_minutes"] == 1
    assert rec["rule"] == "cut_off" and "Lt. Cho" in rec["rule_threshold"]
    assert rec["bridged_ms"] <= rec["cut_ms"] <= rec["ended_ms"]
    audit = world.store.audit_entries(call_id)
    assert [(e["action"], e["by"]) for e in audit] == [
        ("monitor_start", "Det. Ray"), ("monitor_stop", "Det. Ray"), ("cut_off", "Lt. Cho")]
    assert all(int(e["ts"]) >= rec["started_ms"] for e in audit)
    rc, out = icsctl("audit", "--call", call_id)
    assert rc == 0 and "monitor_start" in out and "Lt. Cho" in out
