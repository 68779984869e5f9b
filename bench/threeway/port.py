"""The C detector (asterisk/res_ics_tonewatch.c) against the Python one (ami/tones.py), clip for clip.

    python -m bench.threeway.port [--attempts 70] [--benign 20] [--seed 11]

res_ics_tonewatch is a port of ami.tones.Detector. This builds the module's detector alone
(-DTONEWATCH_STANDALONE, the host's cc), feeds both the same corpus clips (attempts in both tone
plans, benign calls) and prints every clip whose detections differ (signature, onset, duration;
levels within 0.2 dB). It exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ami.tones import Detector, Thresholds

from . import corpus

SRC = Path(__file__).resolve().parents[2] / "asterisk" / "res_ics_tonewatch.c"


def build(out: Path) -> Path:
    subprocess.run(["cc", "-O3", "-D_GNU_SOURCE", "-DTONEWATCH_STANDALONE", "-o", str(out), str(SRC), "-lm"],
                   check=True)
    return out


def python_side(pcm: bytes, plan: str) -> list[tuple]:
    det = Detector(Thresholds(plan=plan))
    out = []
    for i in range(0, len(pcm), 1600):
        out += [(d.signature, d.onset_ms, d.duration_ms, d.level_dbfs, d.detail) for d in det.feed(pcm[i:i + 1600])]
    return out


def c_side(binary: Path, pcm: bytes, plan: str) -> list[tuple]:
    text = subprocess.run([str(binary), plan], input=pcm, capture_output=True, check=True).stdout.decode()
    out = []
    for block in text.split("Channel: ")[1:]:
        f = dict(line.split(": ", 1) for line in block.splitlines()[1:] if ": " in line)
        out.append((f["Signature"], int(f["OnsetMs"]), int(f["DurationMs"]), float(f["LevelDbfs"]),
                    f.get("Detail", "").strip()))
    return out


def same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(x[:3] == y[:3] and x[4] == y[4] and abs(x[3] - y[3]) <= 0.2 for x, y in zip(a, b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=70)
    ap.add_argument("--benign", type=int, default=20, help="benign clips of 60 s")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    clips = []
    for i in range(args.attempts):
        plan = "na" if i % 2 == 0 else "eu"
        kind = corpus.ATTEMPT_KINDS[i % len(corpus.ATTEMPT_KINDS)]
        if plan == "eu" and kind in ("reorder", "sit"):
            plan = "na"
        clips.append((f"{kind}/{plan}", corpus.attempt(kind, rng, plan)[0], plan))
    for i in range(args.benign):
        kind = corpus.BENIGN_KINDS[i % len(corpus.BENIGN_KINDS)]
        clips.append((f"benign {kind}", corpus.benign(kind, rng, 60), "na"))
    with tempfile.TemporaryDirectory() as d:
        binary = build(Path(d) / "tonewatch")
        differ = detections = 0
        for name, x, plan in clips:
            pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
            py, c = python_side(pcm, plan), c_side(binary, pcm, plan)
            detections += len(py)
            if not same(py, c):
                differ += 1
                print(f"{name}: python {py}\n{'':>{len(name) + 2}}C      {c}")
    print(f"{len(clips)} clips, {detections} detections by ami.tones; clips where the C port differs: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
