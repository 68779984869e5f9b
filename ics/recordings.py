"""Every recording checked against its bridged time when the call settles (issue 9).

A recording is evidence: under CPU overload MixMonitor can silently write fewer seconds
than were bridged. check() runs once per call from ics.settlement.settle (the one path
every call takes: the inmate channel's hangup handler, or the AMI listener when that
could not run), after the money is settled, and writes to the call record
(ics.records): bridged_for_ms, recording_ms and recording_check (ok / short / missing),
recording_short_ms when flagged. A flagged call is logged as an ERROR
(recording.short / recording.missing), counted (keys.RECORDINGS_FLAGGED_COUNT) and
listed (keys.RECORDINGS_FLAGGED).

When the file is complete: MixMonitor runs on the called channel and Asterisk closes
the WAV in MixMonitor's own thread once that channel hangs up, which can be a few ms
after the inmate's hangup handler starts settling (measured on the lab: the file is
final 1-5 ms after the called leg's Hangup). While it is being written the WAV header's
data size is 0 (format_wav writes it on close) and the audio reaches the disk in 32 KB
(2 s) blocks, so neither the header nor the file size can be trusted until the close.
A file is complete when the header's data size equals the audio bytes on disk. check()
waits up to FINAL_WAIT_S for that (the bill is already written); a file still open then
is left pending (keys.RECORDINGS_PENDING) and the listener checks it again every second
(ami/listener.py upkeep); after UNFINISHED_MAX_MS (Asterisk died with the file open) it
is judged on the audio bytes on disk.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from . import keys, records
from .store import now_ms

log = structlog.get_logger("ics")

FINAL_WAIT_S = 2.0          # the settle step waits this long for Asterisk to close the file
FINAL_POLL_S = 0.02
UNFINISHED_MAX_MS = 60_000  # a file still open this long after the call ended is judged as it is
DEFAULT_BYTE_RATE = 16_000  # 8 kHz, 16-bit, mono: the stack's one format
CHECKS = ("ok", "short", "missing")


@dataclass(frozen=True)
class Wav:
    data_bytes: int  # audio bytes on disk
    byte_rate: int
    final: bool      # the header's data size matches the disk: Asterisk has closed the file

    @property
    def ms(self) -> int:
        return self.data_bytes * 1000 // self.byte_rate


def measure(path: Path) -> Wav | None:
    """The audio in a WAV file from its bytes on disk, not from pydub (which believes the
    header's data size, 0 while Asterisk writes). None when there is no file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            size = fh.seek(0, 2)
    except (FileNotFoundError, NotADirectoryError):
        return None
    byte_rate, pos = DEFAULT_BYTE_RATE, 12
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return Wav(0, byte_rate, False)
    while pos + 8 <= len(head):
        cid, clen = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, pos + 16)[0] or DEFAULT_BYTE_RATE
        if cid == b"data":
            on_disk = max(0, size - (pos + 8))
            # an odd data size is padded with one byte on close
            return Wav(min(on_disk, clen) if clen else on_disk, byte_rate,
                       clen > 0 and on_disk in (clen, clen + 1))
        pos += 8 + clen + (clen & 1)
    return Wav(0, byte_rate, False)  # header not written yet


@dataclass(frozen=True)
class Verdict:
    bridged_for_ms: int
    recording_ms: int | None  # None: no file
    check: str                # ok / short / missing
    short_ms: int             # bridged time the recording lacks (0 when ok)


def assess(bridged_for_ms: int, recording_ms: int | None, max_short_ms: int) -> Verdict:
    """The pure decision: a recording more than max_short_ms shorter than the bridge is short;
    no file at all is the worst shortfall (missing)."""
    if recording_ms is None:
        return Verdict(bridged_for_ms, None, "missing", bridged_for_ms)
    short = max(0, bridged_for_ms - recording_ms)
    return Verdict(bridged_for_ms, recording_ms, "short" if short > max_short_ms else "ok",
                   short if short > max_short_ms else 0)


def bridged_for_ms(rec: dict) -> int:
    """Bridged time: from bridged_ms to the end of the call, or to a deliberate cut (the
    listener then takes both legs out of the bridge, and MixMonitor's b option stops)."""
    end = rec["ended_ms"]
    if isinstance(rec.get("cut_ms"), int):
        end = min(end, rec["cut_ms"])
    return max(0, end - rec["bridged_ms"])


def due(rec: dict | None) -> bool:
    """The call should have a recording to check: bridged, ended, not privileged, not a
    call-flow fault before the bridge (ics.settlement.faulted), not checked yet."""
    return bool(rec and isinstance(rec.get("bridged_ms"), int) and isinstance(rec.get("ended_ms"), int)
                and rec.get("privileged") != "1" and not rec.get("recording_check")
                and not (rec.get("reason") == "system_error"
                         and str(rec.get("rule_threshold", "")).startswith("fault=")))


def wait_final(path: Path, wait_s: float) -> Wav | None:
    deadline = time.monotonic() + wait_s
    while True:
        wav = measure(path)
        if wav is None or wav.final or time.monotonic() >= deadline:
            return wav
        time.sleep(FINAL_POLL_S)


def check(store, call_id: str, wait_s: float = FINAL_WAIT_S) -> Verdict | None:
    """Check one call's recording, once; None when there is nothing to check or the file is
    still being written (then pending: the listener comes back to it)."""
    r = store.r
    rec = records.get(r, call_id)
    if not due(rec):
        r.zrem(keys.RECORDINGS_PENDING, call_id)
        return None
    r.zadd(keys.RECORDINGS_PENDING, {call_id: rec["ended_ms"]}, nx=True)  # a crash mid-wait is retried
    name = rec.get("recording", "")
    started = time.monotonic()
    wav = wait_final(store.cfg.recordings_dir / name, wait_s) if name else None
    waited_ms = round((time.monotonic() - started) * 1000)  # how long Asterisk took to close the file
    unfinished = wav is not None and not wav.final
    if unfinished and now_ms() - rec["ended_ms"] < UNFINISHED_MAX_MS:
        log.info("recording.pending", call_id=call_id, file=name, bytes_on_disk=wav.data_bytes, waited_ms=waited_ms)
        return None
    verdict = assess(bridged_for_ms(rec), wav.ms if wav else None, store.cfg["recordings"]["max_short_ms"])
    key = keys.call(call_id)
    fields = {"bridged_for_ms": verdict.bridged_for_ms}
    if verdict.recording_ms is not None:
        fields["recording_ms"] = verdict.recording_ms
    if verdict.check != "ok":
        fields["recording_short_ms"] = verdict.short_ms
    # the figures before the check: whoever sees a check sees its figures (a reader between the two
    # once found recording_check and no bridged_for_ms); a second settler measured the same final
    # file and writes the same figures
    r.hset(key, mapping=fields)
    if not r.hsetnx(key, "recording_check", verdict.check):
        r.zrem(keys.RECORDINGS_PENDING, call_id)
        return None  # another settler got here first
    with r.pipeline(transaction=False) as p:  # several slots; the claim above makes it once only
        if verdict.check != "ok":
            p.incr(keys.RECORDINGS_FLAGGED_COUNT)
            p.zadd(keys.RECORDINGS_FLAGGED, {call_id: rec["ended_ms"]})
        p.zrem(keys.RECORDINGS_PENDING, call_id)
        p.execute()
    what = dict(call_id=call_id, file=name or None, bridged_for_ms=verdict.bridged_for_ms,
                recording_ms=verdict.recording_ms, short_ms=verdict.short_ms,
                max_short_ms=store.cfg["recordings"]["max_short_ms"], unfinished=unfinished, waited_ms=waited_ms)
    if verdict.check == "ok":
        log.info("recording.checked", diff_ms=(verdict.recording_ms or 0) - verdict.bridged_for_ms, **what)
    else:
        log.error(f"recording.{verdict.check}", **what)
    return verdict


def pending(r, limit: int = 100) -> list[str]:
    return list(r.zrange(keys.RECORDINGS_PENDING, 0, limit - 1))


def flagged_count(r) -> int:
    return int(r.get(keys.RECORDINGS_FLAGGED_COUNT) or 0)


def flagged(r, limit: int = 10) -> list[str]:
    """The most recently flagged calls first."""
    return list(r.zrevrange(keys.RECORDINGS_FLAGGED, 0, limit - 1))


def describe(rec: dict) -> str | None:
    """One plain line for icsctl calls show; None when the call was not checked."""
    check = rec.get("recording_check")
    if not check:
        return None
    bridged = rec.get("bridged_for_ms", 0) / 1000
    if check == "missing":
        return (f"MISSING: no recording file for {bridged:.1f} s bridged; all of that audio is lost "
                "(recording.missing)")
    recorded = rec.get("recording_ms", 0) / 1000
    if check == "short":
        return (f"SHORT by {rec.get('recording_short_ms', 0) / 1000:.1f} s: {recorded:.1f} s of audio for "
                f"{bridged:.1f} s bridged; that part of the call is lost (recording.short)")
    return f"ok: {recorded:.1f} s of audio for {bridged:.1f} s bridged"
