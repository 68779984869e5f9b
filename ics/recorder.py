"""Passive call recording (recordings.method = "capture", issue 9): ics-recorder.

MixMonitor records inside Asterisk with a thread per call that wakes for every 20 ms
frame in either direction: at 100 recorded calls it raised Asterisk's context switches
from 30,200 to 49,200 a second and its CPU by half, the main cost of a recorded call.
This service records the way passive call loggers on a SPAN port do, off Asterisk's
real-time path: it reads copies of the RTP packets from the kernel (libpcap through
pcapy-ng, a BPF filter on Asterisk's RTP port range, batches of packets per wake-up) and
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

import numpy as np
import structlog

from . import config, logs, records
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
START_TIMEOUT_S = 2.0    # the call flow's wait for "ok"
RESYNC_MS = 200          # an RTP timestamp this far from the arrival clock starts a new stream
AUDIO_PT = (0, 8)        # PCMU, PCMA


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


def _addr(text: str) -> tuple[bytes, int]:
    host, _, port = text.strip().rpartition(":")
    return socket.inet_aton(host.strip("[]")), int(port)


@dataclass
class Call:
    call_id: str
    path: Path
    local: tuple[bytes, int]   # Asterisk's end of the called leg's RTP
    remote: tuple[bytes, int]  # the called party's end
    # (arrival ms, payload type, ssrc, rtp timestamp, payload) per direction: 0 to the phone, 1 from it
    packets: tuple[list, list] = field(default_factory=lambda: ([], []))


class Recorder:
    def __init__(self, cfg: config.Config, r):
        self.cfg, self.r = cfg, r
        self.dir = cfg.recordings_dir
        self.calls: dict[str, Call] = {}
        # (src ip, src port, dst ip, dst port) -> (call, direction): the capture thread's one lookup
        self.flows: dict[tuple, tuple[Call, int]] = {}
        self.lock = threading.Lock()
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
        call = Call(call_id, path, _addr(req["local"]), _addr(req["remote"]))
        (lip, lport), (rip, rport) = call.local, call.remote
        with self.lock:
            self.calls[call_id] = call
            self.flows[(lip, lport, rip, rport)] = (call, 0)
            self.flows[(rip, rport, lip, lport)] = (call, 1)
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
        unpack = struct.unpack_from
        while not self.stopping.is_set():
            asked_ms = time.time() * 1000
            data, meta = cap.next_batch(BATCH)
            if not meta:  # the ring is empty: every packet up to a block's timeout before asking is in
                self.caught_up_ms = asked_ms - CAPTURE_TIMEOUT_MS
                continue
            flows = self.flows
            for i in range(0, len(meta), 16):
                sec, usec, off, caplen = unpack("=IIII", meta, i)
                ip = off + l2
                ihl = (data[ip] & 0x0F) * 4
                udp = ip + ihl
                sport, dport = unpack("!HH", data, udp)
                hit = flows.get((data[ip + 12:ip + 16], sport, data[ip + 16:ip + 20], dport))
                if hit is None:
                    continue
                rtp = udp + 8
                b1, seq, ts, ssrc = unpack("!BHII", data, rtp + 1)
                cc = data[rtp] & 0x0F
                body = rtp + 12 + 4 * cc
                hit[0].packets[hit[1]].append(
                    (sec * 1000 + usec / 1000, b1 & 0x7F, ssrc, ts, data[body:off + caplen]))
            self.caught_up_ms = sec * 1000 + usec / 1000  # the newest packet handled
            stats = cap.stats()
            if stats[1] > self.dropped:  # the kernel ring overran: calls lose audio (flagged short)
                log.error("recorder.dropped", packets=stats[1] - self.dropped)
                self.dropped = stats[1]

    # -- after the call ---------------------------------------------------------------
    def finish_ended(self) -> None:
        with self.lock:
            live = list(self.calls.values())
        for call in live:
            rec = records.get(self.r, call.call_id)
            if rec is None or not isinstance(rec.get("ended_ms"), int):
                continue
            # the call's last packets handled first: the capture thread can run behind under load
            late = time.time() * 1000 - rec["ended_ms"]
            if self.caught_up_ms < rec["ended_ms"] + SETTLE_GRACE_MS and late < CATCH_UP_MAX_MS:
                continue
            with self.lock:
                self.calls.pop(call.call_id, None)
                for k in [k for k, (c, _) in self.flows.items() if c is call]:
                    del self.flows[k]
            self.write(call, rec)

    def write(self, call: Call, rec: dict) -> None:
        if not isinstance(rec.get("bridged_ms"), int):  # never bridged: nothing was recorded
            call.path.unlink(missing_ok=True)
            log.info("recorder.not_bridged", call_id=call.call_id)
            return
        start = rec["bridged_ms"]
        end = min(rec["ended_ms"], rec["cut_ms"]) if isinstance(rec.get("cut_ms"), int) else rec["ended_ms"]
        audio = mix(call.packets, start, max(start, end))
        tmp = call.path.with_suffix(".part")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
            w.writeframes(audio.tobytes())
        os.replace(tmp, call.path)
        log.info("recorder.written", call_id=call.call_id, file=str(call.path), ms=len(audio) * 1000 // RATE,
                 packets=[len(call.packets[0]), len(call.packets[1])])

    def finisher(self) -> None:
        while not self.stopping.wait(POLL_S):
            try:
                self.finish_ended()
            except Exception as exc:  # Redis away a moment: the calls wait for the next round
                log.error("recorder.finish_failed", error=repr(exc))


def place(packets: list, start_ms: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One direction's audio on the bridge's timeline (sample 0 = start_ms), each packet where
    its RTP timestamp puts it; a stream is anchored on its first packet's arrival and anchored
    anew when its timestamps leave the arrival clock (a new SSRC, Asterisk's step at a switch)."""
    pcm = np.zeros(n, np.int32)
    have = np.zeros(n, bool)
    anchor = None  # (ssrc, arrival ms, rtp ts)
    for t, pt, ssrc, ts, payload in packets:
        table = DECODE.get(pt)
        if table is None or not payload:
            continue
        at = None
        if anchor and anchor[0] == ssrc:
            at = anchor[1] + ((ts - anchor[2]) & 0xFFFFFFFF) / 8
            if at - t > RESYNC_MS or t - at > RESYNC_MS:
                at = None
        if at is None:
            anchor, at = (ssrc, t, ts), t
        pos = round((at - start_ms) * 8)
        if pos < 0 or pos >= n:
            continue
        samples = table[np.frombuffer(payload, np.uint8)][: n - pos]
        pcm[pos:pos + len(samples)] = samples
        have[pos:pos + len(samples)] = True
    return pcm, have


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
    rec = Recorder(cfg, connect(cfg))
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
    rec.finish_ended()
    return 0
