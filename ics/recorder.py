"""Passive call recording (recordings.method = "capture", issue 9): ics-recorder.

MixMonitor records inside Asterisk with a thread per call that wakes for every 20 ms
frame in either direction: at 100 recorded calls it raised Asterisk's context switches
from 30,200 to 49,200 a second and its CPU by half, the main cost of a recorded call.
This service records the way passive call loggers on a SPAN port do, off Asterisk's
real-time path: it reads copies of the RTP packets from the kernel (libpcap through
pcapy-ng, a BPF filter on Asterisk's RTP port range, batches of packets per wake-up, each
parsed whole with numpy) and
writes the mixed WAV once the call has ended. Asterisk does nothing more for a recorded
call than for an unrecorded one.

  accept ─▶ agi/flows/callee.py: CHANNEL(rtp,src) / CHANNEL(rtp,dest) of the called
            channel (both parties' audio passes there) ─▶ start() ─TCP─▶ this service:
            makes the file (a WAV header with data size 0, as MixMonitor leaves it while it
            writes) and answers "ok"; no answer and the call is not bridged (fail closed).
  bridge ─▶ the capture thread keeps the call's packets (both directions) by address.
  hang-up ─▶ the finisher sees ended_ms on the call record (Redis, read only), takes the
            packets from bridged_ms to the end (or the cut), places each by its RTP
            timestamp, mixes both directions and replaces the file whole (final header).

The file is as long as the audio captured: a 20 ms stretch no packet covered in either
direction is left out, as MixMonitor writes only as frames arrive, so audio lost (kernel
ring overruns, a recorder restart) comes out short and settlement's check flags it
(ics.recordings). A file whose call ended while this service was down stays open (data
size 0) and is judged on its bytes a minute later: flagged. G.711 (PCMU, PCMA) only, the
stack's one codec; any other payload type is not audio here (RFC 2833 events, comfort noise).
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import socket
import socketserver
import struct
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import structlog

from . import config, keys, logs, records
from .store import connect

log = structlog.get_logger("ics")

RATE = 8000
SNAPLEN = 2048           # an RTP packet of G.711 at 20 ms is 214 bytes on the wire
BATCH = 1024             # packets taken from the kernel per wake-up
CAPTURE_TIMEOUT_MS = 100  # the kernel hands over a block at least this often
RING_BYTES = 32 << 20    # the kernel's capture ring: seconds of every call's packets
SETTLE_GRACE_MS = 100    # packets this long after the call's end handled before its file is written
CATCH_UP_MAX_MS = 30_000  # a capture that far behind: the file is written with what arrived
POLL_S = 0.25            # how often the finisher looks for ended calls
FINISHER_NICE = 10       # the finisher thread's niceness over the service's (the capture thread keeps it)
HAND_OUT_MS = 500        # packets parsed are handed to their calls this often (one sort, not one per batch)
START_TIMEOUT_S = 2.0    # the call flow's wait for "ok"
RESYNC_MS = 200          # an RTP timestamp this far from the arrival clock starts a new stream
ANCHOR_WINDOW = 256      # packets placed per step from one anchor: bounded work when every packet resyncs
AUDIO_PT = (0, 8)        # PCMU, PCMA
# a live call keeps about this many packets a direction in memory (30 s); older ones wait in a file
# in SPILL_DIR (the finisher moves them): 150 calls of 15 min would otherwise hold 1.25 GB
SPILL_PACKETS = 1500
SPILL_EVERY_S = 5        # how often the finisher looks (at 4 times a second it was a fifth of the service's CPU)
SPILL_DIR = ".spill"     # under recordings.dir: this service's own; what a dead one left is dropped at start


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int32)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << (seg - 1)))
    return np.where(a & 0x80, t, -t).astype(np.int32)


DECODE = {0: _ulaw_table(), 8: _alaw_table()}
DECODE_BOTH = np.concatenate([DECODE[0], DECODE[8]])  # mu-law bytes, then A-law bytes (+256)


def _addr(text: str) -> tuple[int, int]:
    host, _, port = text.strip().rpartition(":")
    return int.from_bytes(socket.inet_aton(host.strip("[]")), "big"), int(port)


class Chunk(NamedTuple):
    """Packets of one direction of one call in arrival order, one row each; their payloads back
    to back in flat (a packet's bytes start where the sizes before it add up to)."""
    t_ms: np.ndarray   # float64: arrival, epoch ms
    pt: np.ndarray     # payload type
    ssrc: np.ndarray
    ts: np.ndarray     # RTP timestamp
    size: np.ndarray   # payload bytes
    flat: np.ndarray   # uint8

    @classmethod
    def of(cls, rows) -> "Chunk":
        """From (arrival ms, payload type, ssrc, rtp timestamp, payload) per packet."""
        rows = list(rows)
        col = [[r[k] for r in rows] for k in range(4)]
        return cls(np.array(col[0], np.float64), np.array(col[1], np.uint8), np.array(col[2], np.uint32),
                   np.array(col[3], np.uint32), np.array([len(r[4]) for r in rows], np.int64),
                   np.frombuffer(b"".join(r[4] for r in rows), np.uint8))

    def __len__(self) -> int:
        return len(self.t_ms)

    @classmethod
    def joined(cls, chunks: list) -> "Chunk":
        return cls(*(np.concatenate([c[k] for c in chunks]) for k in range(6)))

    # on disk (Call.spill): direction, packets, payload bytes, then each column's bytes in order
    HEAD = struct.Struct("<BII")
    DTYPES = (np.float64, np.uint8, np.uint32, np.uint32, np.int64)

    def to_bytes(self, direction: int) -> bytes:
        cols = [np.ascontiguousarray(c, dt).tobytes() for c, dt in zip(self[:5], self.DTYPES)]
        return b"".join([self.HEAD.pack(direction, len(self), len(self.flat)), *cols, self.flat.tobytes()])

    @classmethod
    def read_all(cls, path: Path) -> tuple[list, list]:
        """Every chunk a spill file holds, by direction, in the order written."""
        out: tuple[list, list] = ([], [])
        data = memoryview(path.read_bytes())
        at = 0
        while at < len(data):
            direction, n, nflat = cls.HEAD.unpack_from(data, at)
            at += cls.HEAD.size
            cols = []
            for dt in cls.DTYPES:
                cols.append(np.frombuffer(data, dt, n, at).copy())
                at += n * np.dtype(dt).itemsize
            out[direction].append(cls(*cols, np.frombuffer(data, np.uint8, nflat, at).copy()))
            at += nflat
        return out


@dataclass
class Call:
    call_id: str
    path: Path
    local: tuple[int, int]   # Asterisk's end of the called leg's RTP (IPv4 as an int, port)
    remote: tuple[int, int]  # the called party's end
    serial: int = 0          # this recorder's number for the call: the capture's key
    # Chunks per direction: 0 to the phone, 1 from it
    packets: tuple[list, list] = field(default_factory=lambda: ([], []))
    spill: Path | None = None  # the older packets, once moved out of memory (Recorder.spill)
    spill_failing: bool = False

    @property
    def spill_name(self) -> str:
        return f"{self.call_id}.{self.serial}"


class Table(NamedTuple):
    """The capture thread's one lookup, rebuilt whole when a call starts or ends: Asterisk's
    local port -> row (-1: none; the last row is a sentinel no packet matches). A port Asterisk
    hands out again belongs to the call that registered it last."""
    by_port: np.ndarray  # int32[65536]
    lip: np.ndarray      # per row: Asterisk's address, the party's address and port, the call's serial
    rip: np.ndarray
    rport: np.ndarray
    serial: np.ndarray

    @classmethod
    def of(cls, calls) -> "Table":
        by_port = np.full(65536, -1, np.int32)
        rows = list(calls) + [None]
        for i, c in enumerate(rows[:-1]):
            by_port[c.local[1]] = i
        return cls(by_port,
                   np.array([c.local[0] if c else 0 for c in rows], np.int64),
                   np.array([c.remote[0] if c else 0 for c in rows], np.int64),
                   np.array([c.remote[1] if c else -1 for c in rows], np.int64),
                   np.array([c.serial if c else -1 for c in rows], np.int64))


class Recorder:
    def __init__(self, cfg: config.Config, r):
        self.cfg, self.r = cfg, r
        self.dir = cfg.recordings_dir
        self.spills = self.dir / SPILL_DIR
        self.calls: dict[str, Call] = {}
        self.serials = itertools.count(1)
        self.table = Table.of(())  # replaced whole, never changed: the capture thread reads it unlocked
        self.parsed: list[Chunk] = []  # the capture thread's, not yet handed to calls
        self.parsed_keys: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.files = threading.Lock()  # a call's spill and its file: written by one thread at a time
        self.stopping = threading.Event()
        self.dropped = 0
        self.caught_up_ms = 0.0  # every packet captured before this (epoch ms) has reached its call
        self.refuse = ""  # why no call can be recorded here (idle: MixMonitor is the method)

    # -- the call flow's request --------------------------------------------------------
    def start(self, req: dict) -> None:
        if self.refuse:
            raise RuntimeError(self.refuse)
        call_id, name = req["call_id"], req["file"]
        if not records.CALL_ID_RE.match(call_id) or ".." in name or name.startswith("/"):
            raise ValueError(f"bad request {req!r}")
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:  # header only, data size 0: not final
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        with open(path, "r+b") as fh:  # wave wrote the real (0) sizes; make it read as "open"
            fh.seek(40), fh.write(struct.pack("<I", 0))
        call = Call(call_id, path, _addr(req["local"]), _addr(req["remote"]), next(self.serials))
        with self.files, self.lock:  # (files: not while the finisher spills the old one)
            old = self.calls.pop(call_id, None)  # asked again: registered anew, last (its port is its own)
            self.calls[call_id] = call
            if old is not None and old.spill is not None:
                old.spill.unlink(missing_ok=True)
            self.table = Table.of(self.calls.values())
        log.info("recorder.started", call_id=call_id, file=name, local=req["local"], remote=req["remote"])

    # -- capture ----------------------------------------------------------------------
    def capture(self, dev: str, bpf: str) -> None:
        import pcapy  # the only user: icsctl and the call flow never load libpcap

        cap = pcapy.create(dev)
        cap.set_snaplen(SNAPLEN)
        cap.set_timeout(CAPTURE_TIMEOUT_MS)
        cap.set_buffer_size(RING_BYTES)
        cap.activate()
        cap.setfilter(bpf)
        self.dropped = cap.stats()[1]  # lo's traffic before the filter was set: no call's
        link = cap.datalink()
        l2 = {pcapy.DLT_EN10MB: 14, pcapy.DLT_LINUX_SLL: 16, pcapy.DLT_RAW: 0}.get(link)
        if l2 is None:
            raise RuntimeError(f"capture on {dev}: link type {link} not handled")
        log.info("recorder.capturing", device=dev, filter=bpf)
        handed_ms = 0.0
        while not self.stopping.is_set():
            asked_ms = time.time() * 1000
            data, meta = cap.next_batch(BATCH)
            if not meta:  # the ring is empty: every packet up to a block's timeout before asking is in
                self.hand_out(asked_ms - CAPTURE_TIMEOUT_MS)
                continue
            got = parse(data, meta, l2, self.table) if len(self.table.serial) > 1 else None  # none to record
            sec, usec = np.frombuffer(meta, np.uint32)[-4:-2].tolist()  # the newest packet's time
            newest = sec * 1000 + usec / 1000
            if got is not None:
                self.parsed_keys.append(got[0])
                self.parsed.append(got[1])
            if newest - handed_ms >= HAND_OUT_MS:
                self.hand_out(newest)
                handed_ms = newest
            stats = cap.stats()
            if stats[1] > self.dropped:  # the kernel ring overran: calls lose audio (flagged short)
                log.error("recorder.dropped", packets=stats[1] - self.dropped)
                self.dropped = stats[1]
        self.hand_out(time.time() * 1000)  # stopping: what was parsed still reaches its calls

    def hand_out(self, upto_ms: float) -> None:
        """Give each call its packets parsed so far, with one sort for all; then every packet
        captured before upto_ms has reached its call."""
        keys, chunks = self.parsed_keys, self.parsed
        self.parsed_keys, self.parsed = [], []
        if chunks:
            key = np.concatenate(keys)
            order = np.argsort(key, kind="stable")  # by call and direction, arrival order kept
            key = key[order]
            size = np.concatenate([c.size for c in chunks])
            flat = gather(np.concatenate([c.flat for c in chunks]), (np.cumsum(size) - size)[order], size[order])
            cols = [np.concatenate([c[k] for c in chunks])[order] for k in range(4)]
            size = size[order]
            ends = np.cumsum(size)
            cuts = np.flatnonzero(np.diff(key)) + 1
            with self.lock:
                by_serial = {c.serial: c for c in self.calls.values()}
                for g0, g1 in zip(np.r_[0, cuts], np.r_[cuts, len(key)]):
                    call = by_serial.get(int(key[g0]) >> 1)
                    if call is None:  # finished meanwhile: its file is written
                        continue
                    b0, b1 = ends[g0] - size[g0], ends[g1 - 1]
                    call.packets[int(key[g0]) & 1].append(
                        Chunk(*(col[g0:g1].copy() for col in cols), size[g0:g1].copy(), flat[b0:b1].copy()))
        self.caught_up_ms = upto_ms

    # -- after the call ---------------------------------------------------------------
    def finish_ended(self) -> None:
        with self.lock:
            live = list(self.calls.values())
        if not live:
            return
        with self.r.pipeline(transaction=False) as p:  # each live call's end, one round trip for all
            for call in live:
                p.hget(keys.call(call.call_id), "ended_ms")
            ends = p.execute()
        for call, ended in zip(live, ends):
            if not (ended or "").isdigit():
                continue
            # the call's last packets handled first: the capture thread can run behind under load
            late = time.time() * 1000 - int(ended)
            if self.caught_up_ms < int(ended) + SETTLE_GRACE_MS and late < CATCH_UP_MAX_MS:
                continue
            rec = records.get(self.r, call.call_id)
            if rec is None or not isinstance(rec.get("ended_ms"), int):
                continue
            with self.lock:
                if self.calls.get(call.call_id) is call:
                    del self.calls[call.call_id]
                    self.table = Table.of(self.calls.values())
            self.write(call, rec)

    def spill(self) -> None:
        """Live calls' packets past SPILL_PACKETS a direction, oldest first, to each call's spill
        file; write() reads them back in order. Packets leave memory only once on disk: a spill
        that fails (disk full) leaves the file as it was and the packets where they were."""
        with self.files:
            with self.lock:
                moved = [(call, d, len(call.packets[d])) for call in self.calls.values() for d in (0, 1)
                         if sum(map(len, call.packets[d])) >= SPILL_PACKETS]
            for call, d, k in moved:  # hand_out only appends: a direction's first k chunks stay put
                path = call.spill or self.spills / call.spill_name
                try:
                    path.parent.mkdir(exist_ok=True)
                    append_whole(path, Chunk.joined(call.packets[d][:k]).to_bytes(d))
                except OSError as exc:
                    if not call.spill_failing:  # once until it works again, not 8 lines a second a call
                        log.error("recorder.spill_failed", call_id=call.call_id, file=str(path), error=repr(exc))
                    call.spill_failing = True
                    continue
                call.spill, call.spill_failing = path, False
                with self.lock:
                    del call.packets[d][:k]

    def drop_orphan_spills(self) -> None:
        """At start: spill files a recorder that died left (its calls' files stay open: flagged)."""
        orphans = sorted(self.spills.glob("*")) if self.spills.is_dir() else []
        for p in orphans:
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:  # not worth refusing calls over: left for ops, named in the log
                log.error("recorder.spill_orphaned", file=str(p), error=repr(exc))
        if orphans:
            log.error("recorder.spill_orphaned", files=len(orphans),
                      calls=sorted({p.name.rpartition(".")[0] for p in orphans}))

    def write(self, call: Call, rec: dict) -> None:
        with self.files:
            self._write(call, self.take_packets(call), rec)

    def take_packets(self, call: Call) -> tuple[list, list]:
        """A call's packets, those spilled first (the spill file is gone after)."""
        if call.spill is None:
            return call.packets
        spilled = Chunk.read_all(call.spill)
        call.spill.unlink()
        call.spill = None
        return spilled[0] + call.packets[0], spilled[1] + call.packets[1]

    def _write(self, call: Call, packets: tuple[list, list], rec: dict) -> None:
        if not isinstance(rec.get("bridged_ms"), int):  # never bridged: nothing was recorded
            call.path.unlink(missing_ok=True)
            log.info("recorder.not_bridged", call_id=call.call_id)
            return
        start = rec["bridged_ms"]
        end = min(rec["ended_ms"], rec["cut_ms"]) if isinstance(rec.get("cut_ms"), int) else rec["ended_ms"]
        audio = mix(packets, start, max(start, end))
        tmp = call.path.with_suffix(".part")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
            w.writeframes(audio.tobytes())
        os.replace(tmp, call.path)
        log.info("recorder.written", call_id=call.call_id, file=str(call.path), ms=len(audio) * 1000 // RATE,
                 packets=[sum(map(len, packets[0])), sum(map(len, packets[1]))])

    def finisher(self) -> None:
        # writing a file is work nothing waits on: it yields the CPU to live calls' audio (Asterisk)
        # and to the capture thread (Linux nice is per thread), or calls ending together make the
        # calls still talking late
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + FINISHER_NICE))
        next_spill = 0.0
        while not self.stopping.wait(POLL_S):
            try:
                self.finish_ended()
                if time.monotonic() >= next_spill:  # it counts every live call's packets: not each round
                    next_spill = time.monotonic() + SPILL_EVERY_S
                    self.spill()
            except Exception as exc:  # Redis away a moment: the calls wait for the next round
                log.error("recorder.finish_failed", error=repr(exc))


def tune_malloc() -> None:
    """glibc malloc: this service's large arrays (a batch's bytes, a file's samples) come from the
    heap and stay there for the next, instead of being mapped and unmapped each time (page
    faults). bench/recorder.py: a call's file took 4.0 ms to mix without, 2.4 ms with. The cost:
    up to 256 MB the service freed stays in it."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD (glibc's maximum)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its own defaults
        pass


def append_whole(path: Path, data: bytes) -> None:
    """data at the end of path, all of it or none (the file cut back, OSError raised)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        at = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, at)
            raise
    finally:
        os.close(fd)


def big_endian(d: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """The big-endian unsigned integers of n bytes at each offset."""
    v = d[at].astype(np.int64)
    for k in range(1, n):
        v = (v << 8) | d[at + k]
    return v


def gather(d: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The byte runs d[start:start + size], back to back. Packets all of one size (one ptime, the
    usual case) are rows of a sliding view, copied at once: no index per byte."""
    if len(sizes) and sizes[0] > 0 and (sizes == sizes[0]).all():
        return np.lib.stride_tricks.sliding_window_view(d, int(sizes[0]))[starts].reshape(-1)
    return d[_runs(starts, sizes)]


def _runs(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The indices of the byte runs [start, start + size), back to back."""
    total = int(sizes.sum())
    if not total:
        return np.zeros(0, np.int64)
    return np.arange(total) + np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)


def udp_headers(data: bytes, meta: bytes, l2: int) -> tuple[np.ndarray, ...]:
    """A batch's IPv4 packets with room for UDP and RTP headers: their meta rows (sec, usec,
    offset, length), the batch's bytes, and each packet's IP header, UDP header and end offsets.
    l2: the link header's length."""
    m = np.frombuffer(meta, np.uint32).reshape(-1, 4).astype(np.int64)
    d = np.frombuffer(data, np.uint8)
    m = m[m[:, 3] >= l2 + 20 + 8 + 12]  # room for IPv4, UDP and RTP headers
    ip = m[:, 2] + l2
    keep = (d[ip] >> 4) == 4  # the filter's "udp" lets IPv6 through: Asterisk's RTP here is IPv4
    m, ip = m[keep], ip[keep]
    end = m[:, 2] + m[:, 3]
    udp = ip + (d[ip] & 0x0F).astype(np.int64) * 4
    keep = udp + 8 + 12 <= end
    return m[keep], d, ip[keep], udp[keep], end[keep]


def parse(data: bytes, meta: bytes, l2: int, table: Table) -> tuple[np.ndarray, Chunk] | None:
    """One batch from the kernel, all packets at once (numpy; a Python loop per packet cost
    0.09 % of a core per recorded call): the G.711 RTP packets of the calls in table, as
    (call serial * 2 + direction per packet, the packets). meta: (sec, usec, offset, length)
    per packet, native order."""
    m, d, ip, udp, end = udp_headers(data, meta, l2)
    src, dst = big_endian(d, ip + 12, 4), big_endian(d, ip + 16, 4)
    sport, dport = big_endian(d, udp, 2), big_endian(d, udp + 2, 2)
    r0, r1 = table.by_port[sport], table.by_port[dport]  # -1: the sentinel row, which matches nothing
    to_phone = (table.lip[r0] == src) & (table.rip[r0] == dst) & (table.rport[r0] == dport)
    from_phone = (table.lip[r1] == dst) & (table.rip[r1] == src) & (table.rport[r1] == sport)
    row = np.where(to_phone, r0, r1)
    direction = np.where(to_phone, 0, 1)
    rtp = udp + 8
    b0 = d[rtp]
    pt = d[rtp + 1] & 0x7F
    keep = (to_phone | from_phone) & ((b0 >> 6) == 2) & np.isin(pt, AUDIO_PT)  # RTP 2, G.711 only
    m, row, direction, rtp, b0, pt, end = m[keep], row[keep], direction[keep], rtp[keep], b0[keep], pt[keep], end[keep]
    if not len(m):
        return None
    body = rtp + 12 + 4 * (b0 & 0x0F).astype(np.int64)  # past the CSRCs
    ext = (b0 & 0x10) != 0  # a header extension: its length in 32-bit words after 2 bytes
    if ext.any():
        fits = ext & (body + 4 <= end)
        words = big_endian(d, np.where(fits, body, 0) + 2, 2)
        body = np.where(fits, body + 4 + 4 * words, np.where(ext, end, body))  # cut short: no payload
    pad = np.where((b0 & 0x20) != 0, d[end - 1], 0)
    size = np.maximum(end - pad - body, 0)
    key = table.serial[row] * 2 + direction
    chunk = Chunk(m[:, 0] * 1000 + m[:, 1] / 1000, pt.astype(np.uint8), big_endian(d, rtp + 8, 4).astype(np.uint32),
                  big_endian(d, rtp + 4, 4).astype(np.uint32), size, gather(d, body, size))
    return key, chunk


def place(chunks: list, start_ms: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One direction's audio on the bridge's timeline (sample 0 = start_ms), each packet where
    its RTP timestamp puts it; a stream is anchored on its first packet's arrival and anchored
    anew when its timestamps leave the arrival clock (a new SSRC, Asterisk's step at a switch)."""
    if not chunks:
        return np.zeros(n, np.int32), np.zeros(n, bool)
    t, pt, ssrc, ts, size, flat = Chunk.joined(chunks)
    audio = np.isin(pt, AUDIO_PT) & (size > 0)
    first = np.cumsum(size) - size
    t, pt, ssrc, ts, size, first = t[audio], pt[audio], ssrc[audio], ts[audio], size[audio], first[audio]
    at = np.empty(len(t))
    t64, ts64 = t, ts.astype(np.int64)
    i = anchor = 0
    while i < len(t):  # a window at a time from the anchor; a packet that leaves it anchors anew
        w = slice(i, min(len(t), i + ANCHOR_WINDOW))
        cand = t64[anchor] + ((ts64[w] - ts64[anchor]) & 0xFFFFFFFF) / 8
        off = (ssrc[w] != ssrc[anchor]) | (np.abs(cand - t64[w]) > RESYNC_MS)
        j = int(np.argmax(off)) if off.any() else len(cand)
        at[i:i + j] = cand[:j]
        i += j
        if j < len(cand):
            anchor = i  # placed by its own arrival (cand is then its t), the next window from here
            at[i] = t64[i]
            i += 1
    pos = np.round((at - start_ms) * 8).astype(np.int64)
    inside = (pos >= 0) & (pos < n)
    pos, pt, size, first = pos[inside], pt[inside], size[inside], first[inside]
    law = (pt == 8).astype(np.int64) * 256  # the row of DECODE_BOTH
    pad = int(size.max(initial=0))  # a packet running past the end is written there, then cut off
    pcm, have = np.zeros(n + pad, np.int32), np.zeros(n + pad, bool)
    if len(size) and (size == pad).all():  # every packet one size (one ptime, the usual case): rows at once
        dest = pos[:, None] + np.arange(pad)
        samples = DECODE_BOTH[flat[first[:, None] + np.arange(pad)] + law[:, None]]
    else:
        src = _runs(first, size)
        dest = np.repeat(pos, size) + (np.arange(len(src)) - np.repeat(np.cumsum(size) - size, size))
        samples = DECODE_BOTH[flat[src] + np.repeat(law, size)]
    pcm[dest] = samples  # a later packet over the same samples wins, as it arrived later
    have[dest] = True
    return pcm[:n], have[:n]


def mix(packets: tuple[list, list], start_ms: int, end_ms: int) -> np.ndarray:
    """Both directions summed; what neither direction covered is left out (audio lost)."""
    n = (end_ms - start_ms) * 8
    a, ha = place(packets[0], start_ms, n)
    b, hb = place(packets[1], start_ms, n)
    return np.clip((a + b)[ha | hb], -32768, 32767).astype("<i2")


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(4096)
        try:
            self.server.recorder.start(json.loads(line))
            self.wfile.write(b"ok\n")
        except Exception as exc:
            log.error("recorder.start_failed", error=repr(exc))
            self.wfile.write(f"error {exc}\n".encode())


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    # calls accepted together ask together: socketserver's backlog of 5 dropped the rest's SYNs, and
    # their retry (1 s, then 3 s) outlasted the flow's wait, so 5 of 175 calls were refused a bridge
    request_queue_size = 128


def start(cfg: config.Config, call_id: str, name: str, local: str, remote: str) -> None:
    """The call flow's side: ask the recorder to record this called leg; raises unless it said ok."""
    host, port = cfg["recordings"]["recorder_host"], cfg["recordings"]["recorder_port"]
    req = json.dumps(dict(call_id=call_id, file=name, local=local, remote=remote)).encode() + b"\n"
    with socket.create_connection((host, port), timeout=START_TIMEOUT_S) as sock:
        sock.sendall(req)
        answer = sock.makefile("rb").readline().decode().strip()
    if answer != "ok":
        raise RuntimeError(f"recorder at {host}:{port} answered {answer!r} for {name}")


def capture_filter(cfg: config.Config) -> str:
    """BPF: UDP within Asterisk's RTP range (capacity.rtp_conf), both directions."""
    start_port, end_port = config.read_rtp_range(cfg["capacity"]["rtp_conf"])
    return f"udp and portrange {start_port}-{end_port}"


def main() -> int:
    try:
        cfg = config.load()
        bpf = capture_filter(cfg)
    except config.ConfigError as exc:
        logs.setup()
        log.error("service.config_error", error=str(exc))
        return 2
    logs.setup(cfg["log"]["format"], cfg["log"]["level"])
    config.yield_cpu(cfg["recordings"]["recorder_nice"])
    tune_malloc()
    rec = Recorder(cfg, connect(cfg))
    rec.drop_orphan_spills()
    server = _Server((cfg["recordings"]["recorder_host"], cfg["recordings"]["recorder_port"]), _Handler)
    server.recorder = rec
    threads = [threading.Thread(target=rec.capture, args=(cfg["recordings"]["capture_device"], bpf),
                                name="capture", daemon=True),
               threading.Thread(target=rec.finisher, name="finisher", daemon=True),
               threading.Thread(target=server.serve_forever, name="control", daemon=True)]
    capturing = cfg["recordings"]["method"] == "capture"
    if not capturing:  # MixMonitor records: no packet is copied for nothing (and no call asks)
        log.info("recorder.idle", method=cfg["recordings"]["method"])
        rec.refuse = f"recordings.method is {cfg['recordings']['method']}"
        threads = threads[2:]
    for t in threads:
        t.start()
    signal.signal(signal.SIGTERM, lambda *_: rec.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: rec.stopping.set())
    while not rec.stopping.wait(1):
        if capturing and not threads[0].is_alive():
            log.error("recorder.capture_stopped")
            return 1
    server.shutdown()
    if capturing:
        threads[0].join(timeout=2 * CAPTURE_TIMEOUT_MS / 1000)  # its last packets handed to their calls
    rec.finish_ended()
    return 0
