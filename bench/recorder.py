"""ics-recorder's capture path, per packet and per recorded call (issue 9): the kernel's batches
as libpcap hands them over (1,024 frames: each recorded call's called leg both ways, and as many
packets again of legs it does not record, the inmates' legs), parsed and handed to their calls
the way the capture thread does, the finisher's look for packets to spill every SPILL_EVERY_S,
then each call's file mixed as the finisher does (spilled packets read back).

    .venv/bin/python bench/recorder.py [--calls 150] [--seconds 20]

Prints CPU per packet and as % of a core per recorded call (a call: 50 packets a second each way
on its called leg, and 100 more a second of its inmate leg through the same filter).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ics import config, logs, recorder  # noqa: E402
from tests.support.packets import meta_entry, rtp_packet, udp_packet  # noqa: E402

BATCH = recorder.BATCH


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    files = tempfile.mkdtemp(prefix="ics-bench-recorder-")
    cfg = config.load(environ={"ICS_RECORDINGS_DIR": files})
    logs.setup("console", "warning")  # not a line per call registered
    recorder.tune_malloc()  # as the service does
    rec = recorder.Recorder(cfg, None)
    ast, far = "127.0.0.1", "127.0.0.9"
    for i in range(args.calls):
        cid = f"20261130000000-{i:08x}"
        rec.start(dict(call_id=cid, file=f"bench/{cid}.wav", local=f"127.0.0.1:{20000 + 4 * i}",
                       remote=f"127.0.0.9:{40000 + 4 * i}"))
    per_s = args.calls * 200  # packets a second through the filter
    packets = per_s * args.seconds
    t0_ms, data, meta, batches, n = 1_000_000_000_000.0, bytearray(), bytearray(), [], 0
    for k in range(packets):  # 20 ms rounds: every call's four streams in turn
        rnd, j = divmod(k, args.calls * 4)
        call, leg = divmod(j, 4)
        t = t0_ms + 20 * rnd + j * 20 / (args.calls * 4)
        ports = (20000 + 4 * call, 40000 + 4 * call) if leg < 2 else (22000 + 4 * call, 44000 + 4 * call)
        rtp = rtp_packet(0, rnd, 160 * rnd, leg, b"\x90" * 160)
        f = udp_packet(ast, ports[0], far, ports[1], rtp) if leg % 2 == 0 else udp_packet(far, ports[1], ast, ports[0], rtp)
        meta += meta_entry(t, len(data), len(f))
        data += f
        n += 1
        if n == BATCH:
            batches.append((bytes(data), bytes(meta), t))
            data, meta, n = bytearray(), bytearray(), 0
    handed, spilled, spill_s, cpu0 = t0_ms, t0_ms, 0.0, time.process_time()
    for data, meta, t in batches:
        got = recorder.parse(data, meta, 14, rec.table)
        if got is not None:
            rec.parsed_keys.append(got[0]), rec.parsed.append(got[1])
        if t - handed >= recorder.HAND_OUT_MS:
            rec.hand_out(t)
            handed = t
        if t - spilled >= recorder.SPILL_EVERY_S * 1000:  # the finisher's look at every live call
            c0 = time.process_time()
            rec.spill()
            spill_s += time.process_time() - c0
            spilled = t
    rec.hand_out(handed)
    capture_s = time.process_time() - cpu0 - spill_s
    spilled_calls = sum(c.spill is not None for c in rec.calls.values())
    cpu0 = time.process_time()
    for c in rec.calls.values():
        audio = recorder.mix(rec.take_packets(c), int(t0_ms), int(t0_ms) + args.seconds * 1000)
    mix_s = time.process_time() - cpu0
    shutil.rmtree(files)
    got_ms = len(audio) / recorder.RATE * 1000
    n = len(batches) * BATCH
    print(f"{args.calls} calls, {args.seconds} s: {n} packets in {len(batches)} batches of {BATCH}"
          f" ({n // 2} of recorded legs); last call's file {got_ms / 1000:.1f} s")
    print(f"  capture (parse, hand out): {capture_s / n * 1e6:.2f} us a packet,"
          f" {100 * capture_s / args.seconds / args.calls:.4f} % of a core per recorded call")
    print(f"  spill (every {recorder.SPILL_EVERY_S} s):        {100 * spill_s / args.seconds / args.calls:.4f} % of a core"
          f" per recorded call ({spilled_calls} calls had packets on disk)")
    print(f"  files (mix):             {mix_s / args.calls * 1000:.1f} ms a call,"
          f" {100 * mix_s / args.seconds / args.calls:.4f} % of a core per recorded call over its length")
    return 0


if __name__ == "__main__":
    sys.exit(main())
