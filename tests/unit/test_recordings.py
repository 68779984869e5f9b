"""Recordings against the bridge (ics.recordings, issue 9): the file measured from its bytes,
the pure length-vs-bridged decision, and the check settlement runs, on a real Redis.

WAV files here are written the way Asterisk's format_wav writes them: a 44-byte header whose
data size stays 0 while the file is open and is filled in on close.
"""

from __future__ import annotations

import struct

import pytest
import structlog.testing

from ics import config, keys, recordings, records, settlement
from ics.store import now_ms

RATE = 16_000  # bytes per second: 8 kHz, 16-bit, mono
CID = "20261101120000-0123abcd"
NAME = f"ics/main/123456/2026-11-01/{CID}.wav"


def wav_bytes(audio_ms: int, closed: bool = True) -> bytes:
    data = b"\0" * (audio_ms * RATE // 1000)
    size = len(data) if closed else 0
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, RATE, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
        + b"data" + struct.pack("<I", size) + data


def write_wav(path, audio_ms: int, closed: bool = True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(audio_ms, closed))
    return path


# --- the file, from its bytes ------------------------------------------------------------------

def test_a_closed_file_is_final_and_measured_from_its_audio_bytes(tmp_path):
    wav = recordings.measure(write_wav(tmp_path / "a.wav", 60_200))
    assert wav == recordings.Wav(60_200 * 16, RATE, True) and wav.ms == 60_200


def test_a_file_asterisk_still_writes_is_not_final_whatever_its_size(tmp_path):
    # the header's data size is 0 until the close; the bytes on disk are what is written so far
    wav = recordings.measure(write_wav(tmp_path / "a.wav", 4_000, closed=False))
    assert wav is not None and not wav.final and wav.ms == 4_000
    just_opened = recordings.measure(write_wav(tmp_path / "b.wav", 0, closed=False))
    assert just_opened is not None and not just_opened.final and just_opened.ms == 0
    (tmp_path / "c.wav").write_bytes(b"RIFF")  # the header not even written
    assert recordings.measure(tmp_path / "c.wav") == recordings.Wav(0, RATE, False)


def test_no_file_measures_none(tmp_path):
    assert recordings.measure(tmp_path / "nope.wav") is None


# --- the pure decision -------------------------------------------------------------------------

@pytest.mark.parametrize("bridged,recorded,check,short", [
    (60_200, 60_200, "ok", 0),
    (60_200, 60_220, "ok", 0),        # a few ms longer: MixMonitor's last frame
    (60_200, 59_200, "ok", 0),        # exactly the allowance
    (60_200, 59_199, "short", 1001),  # just over it
    (60_200, 55_600, "short", 4600),  # the overload case of issue 9
    (60_200, 0, "short", 60_200),     # an empty file
    (60_200, None, "missing", 60_200),
    (0, None, "missing", 0),          # bridged, not a second of it: a recording was still due
])
def test_assess(bridged, recorded, check, short):
    v = recordings.assess(bridged, recorded, 1000)
    assert (v.check, v.short_ms, v.bridged_for_ms, v.recording_ms) == (check, short, bridged, recorded)


def test_bridged_time_runs_to_the_end_or_to_a_deliberate_cut():
    assert recordings.bridged_for_ms({"bridged_ms": 1_000, "ended_ms": 61_200}) == 60_200
    # a rule's cut takes both legs out of the bridge: the prompts after it are not recorded
    assert recordings.bridged_for_ms({"bridged_ms": 1_000, "ended_ms": 65_000, "cut_ms": 61_000}) == 60_000


# --- the check settlement runs, on a real Redis -------------------------------------------------

def bridged_call(store, bridged_for_ms: int = 60_200, ended_ago_ms: int = 100, **fields) -> dict:
    ended = now_ms() - ended_ago_ms
    values = dict(recording=NAME, privileged="0", outcome="accepted", bridged_ms=ended - bridged_for_ms,
                  ended_ms=ended, facility="main", inmate="123456")
    values.update(fields)
    records.create(store.r, CID, **{k: v for k, v in values.items() if v is not None})
    return records.get(store.r, CID)


def test_a_short_recording_is_flagged_logged_counted_once(store):
    bridged_call(store)
    write_wav(store.cfg.recordings_dir / NAME, 55_600)
    with structlog.testing.capture_logs() as logged:
        v = recordings.check(store, CID)
        assert recordings.check(store, CID) is None  # once: a second settle does not count it again
    assert (v.check, v.short_ms) == ("short", 4_600)
    rec = records.get(store.r, CID)
    assert (rec["recording_check"], rec["bridged_for_ms"], rec["recording_ms"], rec["recording_short_ms"]) \
        == ("short", 60_200, 55_600, 4_600)
    assert recordings.flagged_count(store.r) == 1 and recordings.flagged(store.r) == [CID]
    assert store.r.get(keys.RECORDINGS_FLAGGED_COUNT) == "1"
    errors = [e for e in logged if e["log_level"] == "error"]
    assert [(e["event"], e["call_id"], e["short_ms"]) for e in errors] == [("recording.short", CID, 4_600)]
    assert "SHORT by 4.6 s: 55.6 s of audio for 60.2 s bridged" in recordings.describe(rec)


def test_a_normal_recording_is_measured_and_not_flagged(store):
    bridged_call(store)
    write_wav(store.cfg.recordings_dir / NAME, 60_180)
    with structlog.testing.capture_logs() as logged:
        assert recordings.check(store, CID).check == "ok"
    rec = records.get(store.r, CID)
    assert (rec["recording_check"], rec["recording_ms"], rec["bridged_for_ms"]) == ("ok", 60_180, 60_200)
    assert "recording_short_ms" not in rec and recordings.flagged_count(store.r) == 0
    assert [e["event"] for e in logged] == ["recording.checked"] and logged[0]["diff_ms"] == -20
    assert not recordings.pending(store.r)


def test_whoever_sees_the_check_sees_its_figures(store, monkeypatch):
    """The check is claimed after its figures are written: a reader (icsctl calls show, a test
    polling for the check) once found recording_check and no bridged_for_ms between the two."""
    bridged_call(store)
    write_wav(store.cfg.recordings_dir / NAME, 60_180)
    seen = []
    real = type(store.r).hsetnx

    def hsetnx(self, name, field, value):
        if field == "recording_check":
            seen.append(self.hmget(name, "bridged_for_ms", "recording_ms"))
        return real(self, name, field, value)

    monkeypatch.setattr(type(store.r), "hsetnx", hsetnx)
    assert recordings.check(store, CID).check == "ok"
    assert seen == [["60200", "60180"]]


def test_no_file_for_a_bridged_unprivileged_call_is_the_worst_shortfall(store):
    bridged_call(store)
    with structlog.testing.capture_logs() as logged:
        assert recordings.check(store, CID).check == "missing"
    rec = records.get(store.r, CID)
    assert (rec["recording_check"], rec["recording_short_ms"]) == ("missing", 60_200) and "recording_ms" not in rec
    assert [e["event"] for e in logged if e["log_level"] == "error"] == ["recording.missing"]
    assert recordings.flagged_count(store.r) == 1
    assert recordings.describe(rec).startswith("MISSING: no recording file for 60.2 s bridged")


def test_a_record_without_a_file_name_is_missing_too(store):
    bridged_call(store, recording=None)
    assert recordings.check(store, CID).check == "missing"


@pytest.mark.parametrize("fields", [
    {"privileged": "1", "recording": None},                          # attorney: never recorded
    {"bridged_ms": None},                                             # never bridged
    {"reason": "system_error", "rule_threshold": "fault=menu"},       # the menu failed before the bridge
])
def test_calls_that_owe_no_recording_are_not_checked(store, fields):
    bridged_call(store, **fields)
    assert recordings.check(store, CID) is None
    assert "recording_check" not in records.get(store.r, CID) and recordings.flagged_count(store.r) == 0


def test_a_file_still_being_written_is_never_judged_early_but_left_to_the_listener(store):
    bridged_call(store)
    path = write_wav(store.cfg.recordings_dir / NAME, 54_000, closed=False)  # 2 s blocks not flushed yet
    assert recordings.check(store, CID, wait_s=0.1) is None
    assert "recording_check" not in records.get(store.r, CID)
    assert recordings.pending(store.r) == [CID] and recordings.flagged_count(store.r) == 0
    write_wav(path, 60_200)  # Asterisk closes it: the listener's next pass (no wait) decides
    assert recordings.check(store, CID, wait_s=0).check == "ok"
    assert not recordings.pending(store.r)


async def test_the_listener_finishes_a_pending_check_once_asterisk_closes_the_file(store):
    from tests.unit.test_fault_settlement import listener
    lis = listener(store)
    bridged_call(store)
    path = write_wav(store.cfg.recordings_dir / NAME, 50_000, closed=False)
    assert recordings.check(store, CID, wait_s=0) is None
    await lis.recheck_recordings()  # still open: still pending
    assert recordings.pending(store.r) == [CID]
    write_wav(path, 57_000)
    await lis.recheck_recordings()
    assert not recordings.pending(store.r) and records.get(store.r, CID)["recording_check"] == "short"


def test_a_file_asterisk_never_closed_is_judged_on_its_bytes_after_a_minute(store):
    bridged_call(store, ended_ago_ms=recordings.UNFINISHED_MAX_MS + 1000)
    write_wav(store.cfg.recordings_dir / NAME, 30_000, closed=False)  # Asterisk died with it open
    v = recordings.check(store, CID, wait_s=0)
    assert (v.check, v.recording_ms, v.short_ms) == ("short", 30_000, 30_200)


def test_settlement_checks_the_recording_after_the_money(store):
    """The one path: settlement.settle (hangup handler or listener) ends with the check."""
    bridged_call(store, bridged_for_ms=20_000, account="", rate_cents=0, outcome="accepted", ended_ago_ms=0)
    write_wav(store.cfg.recordings_dir / NAME, 15_000)
    with structlog.testing.capture_logs() as logged:
        rec = settlement.settle(store, CID)
    events = [e["event"] for e in logged]
    assert events.index("call.settled") < events.index("recording.short")
    assert rec["settled"] == "1" and rec["recording_check"] == "short" and rec["recording_short_ms"] == 5_000


def test_a_failing_check_never_fails_the_settlement(store, monkeypatch):
    bridged_call(store, account="", rate_cents=0, ended_ago_ms=0)

    def boom(*a, **k):
        raise OSError("recordings dir unreadable")
    monkeypatch.setattr(recordings, "check", boom)
    with structlog.testing.capture_logs() as logged:
        assert settlement.settle(store, CID)["settled"] == "1"
    assert [e["event"] for e in logged if e["log_level"] == "error"] == ["recording.check_failed"]


# --- the allowance is configuration ------------------------------------------------------------

def test_max_short_ms_is_layered_and_validated(tmp_path):
    assert config.load(environ={})["recordings"]["max_short_ms"] == 1000
    toml = tmp_path / "ics.toml"
    toml.write_text("[recordings]\nmax_short_ms = 1500\n")
    assert config.load(str(toml), environ={})["recordings"]["max_short_ms"] == 1500
    assert config.load(str(toml), environ={"ICS_RECORDINGS_MAX_SHORT_MS": "2000"})["recordings"]["max_short_ms"] == 2000
    for bad in ("0", "100", "600000"):
        with pytest.raises(config.ConfigError, match="recordings.max_short_ms must be 200 to 60000 ms"):
            config.load(environ={"ICS_RECORDINGS_MAX_SHORT_MS": bad})
    with pytest.raises(config.ConfigError, match="recordings.max_short_ms must be int"):
        config.load(environ={"ICS_RECORDINGS_MAX_SHORT_MS": "1s"})
