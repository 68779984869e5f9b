"""Recordings on the real stack (issue 9): by ics-recorder (recordings.method "capture", the
default), whose file holds both parties' audio for the bridged time and which an attorney's call
never reaches, and by MixMonitor (the other method, with ics-fastagi restarted for it); each
checked against the bridge when the call settles (never lose recorded audio without a trace).

What losing audio looks like from outside is fewer seconds in the file than were bridged: the
test makes that happen for real by stopping MixMonitor mid-call with an AMI StopMixMonitor on
the called channel (the channel it records), or by the file vanishing from the monitor dir.
The settlement path (the inmate channel's hangup handler) must then flag the record, log an
ERROR, count it, and `icsctl calls show` / `icsctl ledger check` must say so. A normal call is
measured and not flagged.
"""

import time
import wave

import numpy as np
import pytest

from ics import recorder, recordings, records

from tests.e2e.test_billing_calls import accept  # noqa: F401
from tests.e2e.test_collect_call import lines  # noqa: F401 (fixture)
from tests.e2e.test_policy import icsctl
from tests.support import services
from tests.e2e.test_collect_call import answer, start_call
from tests.support.callflow import NUMBER, latest_call, make_world, press_when, wait_settled

pytestmark = pytest.mark.e2e


def wait_checked(world, call_id: str, timeout: float = 10) -> dict:
    """The record once its recording was checked (settlement does it after the money)."""
    deadline = time.time() + timeout
    while True:
        rec = records.get(world.store.r, call_id) or {}
        if rec.get("recording_check") or time.time() > deadline:
            return rec
        time.sleep(0.05)


def called_channel(ami, mark) -> str:
    ev = ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"),
                      10, since=mark)
    return ev["Channel"]


def test_a_normal_recorded_call_is_measured_and_not_flagged(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    time.sleep(6)
    callee.hangup()
    call_id = wait_settled(world)["call_id"]
    rec = wait_checked(world, call_id)
    assert rec.get("recording_check") == "ok", rec
    # the file's audio against bridged_ms .. the end: measured within about 20 ms on the lab
    assert 5_000 <= rec["bridged_for_ms"] <= 8_000, rec
    assert abs(rec["recording_ms"] - rec["bridged_for_ms"]) < 1000, rec
    assert "recording_short_ms" not in rec
    assert recordings.flagged_count(world.store.r) == 0 and not recordings.pending(world.store.r)
    # whichever settler claimed the check logs it: the settle AGI, or the listener, which also
    # settles a hang-up it saw and may find the recorder's file first
    checked = [e for name in ("fastagi", "ami") for e in services.log_events(name, "recording.checked", call_id)]
    assert len(checked) == 1 and checked[0]["recording_ms"] == rec["recording_ms"], checked
    assert not any(services.log_events(name, "recording.short", call_id) for name in ("fastagi", "ami"))
    rc, out = icsctl("calls", "show", call_id)
    assert rc == 0 and f"ok: {rec['recording_ms'] / 1000:.1f} s of audio for" in out, out
    rc, out = icsctl("ledger", "check")
    assert rc == 0 and "recordings: none short or missing" in out, out


@pytest.fixture
def mixmonitor(stack):
    """ics-fastagi restarted with recordings.method = "mixmonitor" for one test, then as it was."""
    services.kill("fastagi")
    services.restart("fastagi", env={"ICS_RECORDINGS_METHOD": "mixmonitor"})
    try:
        yield
    finally:
        services.kill("fastagi")
        services.restart("fastagi")


RATE = 8000
INMATE_HZ, FAMILY_HZ, NEITHER_HZ = 700, 1300, 2300


def tone(path, hz: float, seconds: float = 10) -> str:
    t = np.arange(int(seconds * RATE)) / RATE
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes((8000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())
    return str(path)


def level(samples: np.ndarray, hz: float) -> float:
    """Amplitude of one frequency in a stretch of audio (a single DFT bin)."""
    t = np.arange(len(samples)) / RATE
    return float(abs(np.dot(samples, np.exp(-2j * np.pi * hz * t))) * 2 / len(samples))


def test_capture_records_what_both_parties_said_for_the_bridged_time(ami, lines, tmp_path):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    mark = ami.mark()
    call, callee = accept(ami, inmate, family)
    call.talk(tone(tmp_path / "inmate.wav", INMATE_HZ))        # the inmate speaks from the bridge on
    time.sleep(3)
    callee.talk(tone(tmp_path / "family.wav", FAMILY_HZ))      # the family from 3 s in
    time.sleep(4)
    callee.hangup()
    call_id = wait_settled(world)["call_id"]
    rec = wait_checked(world, call_id)
    assert rec.get("recording_check") == "ok", rec
    assert 6_000 <= rec["bridged_for_ms"] <= 9_000, rec
    assert abs(rec["recording_ms"] - rec["bridged_for_ms"]) < 300, rec   # every 20 ms of the bridge
    # Asterisk did no recording work: ics-recorder wrote the file from the packets it captured
    assert not ami.events({"Event": "MixMonitorStart"}, since=mark)
    written = services.log_events("recorder", "recorder.written", call_id)
    assert written and all(n > 200 for n in written[0]["packets"]), written  # both directions
    with wave.open(str(world.cfg.recordings_dir / rec["recording"])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)
    assert len(audio) * 1000 // RATE == rec["recording_ms"]
    early, late = audio[int(0.5 * RATE):int(2.5 * RATE)], audio[-int(3 * RATE):-int(1 * RATE)]
    # the inmate's words where the inmate spoke, the family's only once they spoke, nothing else
    assert level(early, INMATE_HZ) > 1000 and level(early, FAMILY_HZ) < 200, (
        level(early, INMATE_HZ), level(early, FAMILY_HZ))
    assert level(late, INMATE_HZ) > 1000 and level(late, FAMILY_HZ) > 1000, (
        level(late, INMATE_HZ), level(late, FAMILY_HZ))
    assert level(late, NEITHER_HZ) < 200
    rc, out = icsctl("calls", "show", call_id)
    assert rc == 0 and f"ok: {rec['recording_ms'] / 1000:.1f} s of audio for" in out, out


def test_without_the_recorder_a_recorded_call_is_never_bridged(ami, lines):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    services.kill("recorder")
    try:
        call, mark = start_call(ami, inmate, family)
        callee = answer(ami, family, mark)
        press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{NUMBER}")
        rec = wait_settled(world)
    finally:
        services.restart("recorder")
    assert "bridged_ms" not in rec and rec.get("billed_cents", 0) == 0, rec
    assert not ami.events(lambda e: e.get("Event") == "BridgeEnter"
                          and e.get("Channel", "").startswith(f"PJSIP/{NUMBER}"), since=mark)


def test_a_restarted_recorder_drops_the_spill_files_a_killed_one_left(stack):
    """A long call's older packets wait in recordings.dir/.spill; the recorder killed, no one
    else can read them (its calls' files stay open and are flagged): the next one removes them."""
    spills = make_world().cfg.recordings_dir / recorder.SPILL_DIR
    spills.mkdir(parents=True, exist_ok=True)
    orphan = spills / "20261130023000-0123abd3.7"
    orphan.write_bytes(b"\x00" * 64)
    services.kill("recorder")
    services.restart("recorder")
    assert not orphan.exists()
    logged = services.log_events("recorder", "recorder.spill_orphaned", "20261130023000-0123abd3")
    assert logged and logged[-1]["level"] == "error" and logged[-1]["files"] >= 1, logged


def test_a_recording_stopped_mid_call_is_flagged_short_logged_counted_and_shown(ami, lines, mixmonitor):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    mark = ami.mark()
    call, callee = accept(ami, inmate, family)
    chan = called_channel(ami, mark)
    time.sleep(3)
    # Asterisk stops writing the call's audio while the bridge goes on
    assert ami.action("StopMixMonitor", Channel=chan).get("Response") == "Success"
    ami.wait_for({"Event": "MixMonitorStop", "Channel": chan}, 5, since=mark)
    time.sleep(4)
    call.hangup()
    call_id = wait_settled(world)["call_id"]
    rec = wait_checked(world, call_id)

    assert rec.get("recording_check") == "short", rec
    assert 2_000 <= rec["recording_ms"] <= 4_000, rec            # the 3 s before the stop
    assert 3_000 <= rec["recording_short_ms"] <= 6_000, rec       # the 4 s after it
    assert rec["recording_short_ms"] == rec["bridged_for_ms"] - rec["recording_ms"]
    logged = services.log_events("fastagi", "recording.short", call_id)  # the hangup handler's settle
    assert logged and logged[0]["level"] == "error" and logged[0]["short_ms"] == rec["recording_short_ms"], logged
    assert recordings.flagged_count(world.store.r) == 1
    assert recordings.flagged(world.store.r) == [call_id]
    assert not recordings.pending(world.store.r)
    # the money is settled as usual: the check never holds up the bill
    assert (rec["reason"], rec["billed_minutes"]) == ("inmate_hangup", 1)

    rc, out = icsctl("calls", "show", call_id)
    assert rc == 0 and f"SHORT by {rec['recording_short_ms'] / 1000:.1f} s" in out, out
    rc, out = icsctl("ledger", "check")
    assert rc == 0 and f"RECORDINGS: 1 call(s) with a short or missing recording (audio lost), latest: {call_id}" \
        in out, out


def test_a_recording_file_gone_from_the_monitor_dir_is_flagged_missing(ami, lines, mixmonitor):  # noqa: F811
    inmate, family, _ = lines
    world = make_world(balance_cents=500)
    call, callee = accept(ami, inmate, family)
    path = world.cfg.recordings_dir / latest_call(world)["recording"]
    time.sleep(2)
    path.unlink()  # MixMonitor writes on into the unlinked file: nothing is left to keep
    time.sleep(2)
    callee.hangup()
    call_id = wait_settled(world)["call_id"]
    rec = wait_checked(world, call_id)
    assert rec.get("recording_check") == "missing", rec
    assert "recording_ms" not in rec and rec["recording_short_ms"] == rec["bridged_for_ms"] > 3000, rec
    assert services.log_events("fastagi", "recording.missing", call_id)
    assert recordings.flagged_count(world.store.r) == 1
    rc, out = icsctl("calls", "show", call_id)
    assert rc == 0 and "MISSING: no recording file" in out and "(missing)" in out, out
