"""Captured packets as libpcap hands them to ics-recorder (tests/unit/test_recorder.py,
bench/recorder.py): Ethernet frames of IPv4 UDP RTP, and a batch as pcapy's next_batch gives it."""

from __future__ import annotations

import socket
import struct


def udp_packet(src: str, sport: int, dst: str, dport: int, rtp: bytes) -> bytes:
    """An Ethernet frame as libpcap hands it over (14 bytes of link header, IPv4, UDP)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(rtp), 0) + rtp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\0" * 12 + b"\x08\x00" + ip + udp


def rtp_packet(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, csrcs: int = 0, ext_words: int = -1,
               pad: int = 0) -> bytes:
    b0 = 0x80 | csrcs | (0x10 if ext_words >= 0 else 0) | (0x20 if pad else 0)
    head = struct.pack("!BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + b"\0\0\0\1" * csrcs
    if ext_words >= 0:
        head += struct.pack("!HH", 0xBEDE, ext_words) + b"\0" * 4 * ext_words
    return head + payload + (b"\0" * (pad - 1) + bytes([pad]) if pad else b"")


def meta_entry(t_ms: float, offset: int, length: int) -> bytes:
    """One frame's (sec, usec, offset, length) in next_batch's meta."""
    return struct.pack("=IIII", int(t_ms // 1000), int(t_ms % 1000 * 1000), offset, length)


def batch(frames_at: list[tuple[float, bytes]]) -> tuple[bytes, bytes]:
    """(data, meta) as pcapy's next_batch gives them: frames back to back."""
    data, meta = b"", b""
    for t_ms, frame in frames_at:
        meta += meta_entry(t_ms, len(data), len(frame))
        data += frame
    return data, meta
