"""The called leg's received audio, tapped into the listener: an AudioSocket server.

For every bridged inmate call the listener originates an AudioSocket channel (chan_audiosocket,
to this server, with the tap's UUID) that runs ChanSpy on the called leg (options q: no beep,
o: only the audio the called side sends, E and S: end with it); what ChanSpy gives the channel
is streamed here. Nothing joins the call's bridge and nothing is written to it: ChanSpy
reads a copy through an audio hook, as TALK_DETECT already does, so neither party hears a
change and no latency is added.

AudioSocket frames: kind (1 byte), length (2 bytes, big endian), payload. Kind 0x01 carries the
UUID (16 bytes), 0x10 signed-linear 8 kHz audio, 0x00 the hang-up, 0xff an error. The samples go
to the call's ami.tones.Detector in 100 ms batches; detections go to the listener's callback.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid as uuid_mod
from dataclasses import dataclass, field
from typing import Callable

import structlog

from .tones import Detection, Detector, Thresholds

log = structlog.get_logger("ami")

KIND_HANGUP, KIND_UUID, KIND_AUDIO, KIND_ERROR = 0x00, 0x01, 0x10, 0xFF
BATCH_BYTES = 1600   # 100 ms of 8 kHz 16-bit samples per detector pass
# Asterisk sends one 20 ms frame (3 + 320 bytes) per TCP segment. With SO_RCVLOWAT at a batch of
# them the kernel wakes the listener once per batch instead of once per frame (a FIN still wakes
# it): most of the tap's cost in the listener was those wake-ups (README, Three-way calls).
LOWAT_BYTES = (3 + 320) * (BATCH_BYTES // 320)


@dataclass
class Tap:
    """One call's tap: its detector, and when its audio began (offsets are counted from there)."""
    key: str                       # the listener's live-call key (Linkedid)
    detector: Detector
    on_detect: Callable[["Tap", Detection], None]
    started_ms: int = 0            # epoch ms of the first audio frame
    samples: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def onset_ms(self, det: Detection) -> int:
        """Epoch ms the signature began, on the audio's own clock."""
        return self.started_ms + det.onset_ms


class TapServer:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.taps: dict[str, Tap] = {}     # uuid -> tap
        self.server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Stream(self), self.host, self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def expect(self, key: str, thresholds: Thresholds, on_detect: Callable[[Tap, Detection], None]) -> str:
        """A new tap for a call: returns the UUID its AudioSocket will present."""
        tap_id = str(uuid_mod.uuid4())
        self.taps[tap_id] = Tap(key, Detector(thresholds), on_detect)
        return tap_id

    def drop(self, tap_id: str) -> None:
        tap = self.taps.pop(tap_id, None)
        if tap is not None:
            tap.closed = True



class _Stream(asyncio.Protocol):
    """One AudioSocket connection, parsed as bytes arrive (a Protocol: no coroutine hop per
    20 ms frame; the stream API cost the listener ten times the detector's own CPU)."""

    def __init__(self, server: TapServer):
        self.server = server
        self.buf = bytearray()
        self.after = 0                 # bytes received after the frame being handled
        self.pending = bytearray()
        self.tap_id = ""
        self.tap: Tap | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOWAT_BYTES)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        buf, pos = self.buf, 0
        try:
            while len(buf) - pos >= 3:   # a batch of frames: walk them, cut the buffer once
                kind, size = buf[pos], (buf[pos + 1] << 8) | buf[pos + 2]
                end = pos + 3 + size
                if end > len(buf):
                    break
                self.after = len(buf) - end
                ok = self._frame(kind, buf[pos + 3:end])
                pos = end
                if not ok:
                    self.transport.close()
                    return
            del buf[:pos]
        except Exception:  # one call's tap must never stop the others
            log.exception("tap.failed", tap=self.tap_id)
            self.transport.close()

    def _frame(self, kind: int, payload: bytearray) -> bool:
        tap = self.tap
        if kind == KIND_UUID:
            self.tap_id = str(uuid_mod.UUID(bytes=bytes(payload)))
            self.tap = self.server.taps.get(self.tap_id)
            if self.tap is None:
                log.error("tap.unknown", tap=self.tap_id)
                return False
            self.tap.connected.set()
        elif kind == KIND_AUDIO and tap is not None and not tap.closed:
            if not tap.started_ms:   # the batch's later frames arrived with it: count them back
                tap.started_ms = int(time.time() * 1000) - 20 * (self.after // (3 + 320))
            self.pending += payload
            if len(self.pending) >= BATCH_BYTES:
                chunk, self.pending = bytes(self.pending), bytearray()
                tap.samples += len(chunk) // 2
                for det in tap.detector.feed(chunk):
                    tap.on_detect(tap, det)
        elif kind in (KIND_HANGUP, KIND_ERROR):
            return False
        return True

    def connection_lost(self, exc) -> None:
        if self.tap_id:
            self.server.drop(self.tap_id)
