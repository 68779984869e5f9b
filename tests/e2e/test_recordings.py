"""Recordings checked against the bridge when the call settles (issue 9: never lose recorded
audio without a trace), on the real stack.

What losing audio looks like from outside is fewer seconds in the file than were bridged: the
test makes that happen for real by stopping MixMonitor mid-call with an AMI StopMixMonitor on
the called channel (the channel it records), or by the file vanishing from the monitor dir.
The settlement path (the inmate channel's hangup handler) must then flag the record, log an
ERROR, count it, and `icsctl calls show` / `icsctl ledger check` must say so. A normal call is
measured and not flagged.
"""

import time

import pytest

from ics import recordings, records

from tests.e2e.test_billing_calls import accept  # noqa: F401
from tests.e2e.test_collect_call import lines  # noqa: F401 (fixture)
from tests.e2e.test_policy import icsctl
from tests.support import services
from tests.support.callflow import NUMBER, latest_call, make_world, wait_settled

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
    assert services.log_events("fastagi", "recording.checked", call_id)
    assert not services.log_events("fastagi", "recording.short", call_id)
    rc, out = icsctl("calls", "show", call_id)
    assert rc == 0 and f"ok: {rec['recording_ms'] / 1000:.1f} s of audio for" in out, out
    rc, out = icsctl("ledger", "check")
    assert rc == 0 and "recordings: none short or missing" in out, out


def test_a_recording_stopped_mid_call_is_flagged_short_logged_counted_and_shown(ami, lines):  # noqa: F811
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


def test_a_recording_file_gone_from_the_monitor_dir_is_flagged_missing(ami, lines):  # noqa: F811
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
