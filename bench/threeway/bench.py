"""Three-way detection error rates over the labelled corpus (bench/threeway/corpus.py).

    python -m bench.threeway.bench [--attempts 350] [--benign-minutes 1000] [--seed 11]

Each clip is streamed in 100 ms batches (as ami.audiotap gives them) through the production
detector (ami.tones.Detector) and the production rules at the default responses
(ami.rules.LiveCall.detected), one call per clip. Prints per signature the detection rate and
the latency from the signature's onset to the rule firing (audio time, p50/p99), the false
actions (disconnect, warn, flag) per 1,000 benign call-minutes, and the detector's CPU per call.
This is the decision path without Asterisk: the tap's own cost (ChanSpy + AudioSocket channel)
and the network are not in these figures (README "Three-way calls" gives what was measured of it).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import numpy as np

from ami.rules import LiveCall, Policy
from ami.tones import Detector
from ics import config

from . import corpus

BATCH = 800  # samples: 100 ms


def run_clip(x: np.ndarray, plan: str) -> tuple[list, float]:
    f = dict(config.DEFAULTS["facility_defaults"], tone_plan=plan)
    call = LiveCall("bench", call_id="bench", policy=Policy.from_facility(f))
    call.start(now=0.0)
    det = Detector(call.policy.tones)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    fired, cpu = [], 0.0
    for i in range(0, len(pcm), BATCH * 2):
        t0 = time.process_time()
        found = det.feed(pcm[i:i + BATCH * 2])
        cpu += time.process_time() - t0
        wall = (i // 2 + BATCH) * 1000 // corpus.RATE  # the batch is complete: audio ms
        for d in found:
            cut = call.detected(d, wall)
            if cut is not None:
                fired.append((cut.reason, cut.response, wall))
    return fired, cpu


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=350)
    ap.add_argument("--benign-minutes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    caught, total, late, own = defaultdict(int), defaultdict(int), defaultdict(list), defaultdict(int)
    cpu_s = audio_s = 0.0
    for i in range(a.attempts):
        kind = corpus.ATTEMPT_KINDS[i % len(corpus.ATTEMPT_KINDS)]
        plan = "eu" if i % 4 == 3 and kind in ("flash", "dial_tone", "ringback", "busy") else "na"
        x, onset, rule = corpus.attempt(kind, rng, plan)
        fired, cpu = run_clip(x, plan)
        cpu_s, audio_s = cpu_s + cpu, audio_s + len(x) / corpus.RATE
        key = f"{kind}/{plan}"
        total[key] += 1
        hits = [(w, r) for r, resp, w in fired if resp == "disconnect"]   # the first disconnect ends the call
        if hits:
            caught[key] += 1
            own[key] += hits[0][1] == rule
            late[key].append(hits[0][0] - onset * 1000)
    false = defaultdict(int)
    benign_min = 0.0
    i = 0
    while benign_min < a.benign_minutes:
        kind = corpus.BENIGN_KINDS[i % len(corpus.BENIGN_KINDS)]
        x = corpus.benign(kind, rng, 120)
        fired, cpu = run_clip(x, "na")
        cpu_s, audio_s = cpu_s + cpu, audio_s + len(x) / corpus.RATE
        benign_min += len(x) / corpus.RATE / 60
        for r, resp, _ in fired:
            false[(kind, r, resp)] += 1
        i += 1
    print(f"attempts: {sum(total.values())}; benign: {benign_min:.0f} call-minutes ({i} calls); seed {a.seed}")
    print("caught: disconnected; own rule: by the signature's own rule (flash: flash_sequence, else the"
          " tone it ends in); latency: onset (a flash: its dead air) to the rule firing")
    print(f"{'signature/plan':<18}{'caught':>10}{'own rule':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for key in sorted(total):
        print(f"{key:<18}{caught[key]:>5}/{total[key]:<4}{own[key]:>10}{pct(late[key], 50):>9.0f}"
              f"{pct(late[key], 99):>9.0f}{max(late[key], default=float('nan')):>9.0f}")
    for resp in ("disconnect", "warn", "flag"):
        n = sum(v for (k, r, rs), v in false.items() if rs == resp)
        print(f"false {resp}: {n} ({n / benign_min * 1000:.2f} per 1,000 benign call-minutes)")
    for (k, r, rs), v in sorted(false.items()):
        print(f"  {k}: {r} -> {rs} x{v}")
    print(f"detector CPU: {cpu_s / audio_s * 100:.3f}% of one core per live call "
          f"({cpu_s:.1f} s for {audio_s / 60:.0f} call-minutes)")


if __name__ == "__main__":
    main()
