"""The labelled three-way corpus: what a called party's line sends, synthesised (no downloads).

Each clip is 8 kHz mono 16-bit WAV. Speech is espeak-ng (several voices, pauses of 0.3-3 s
with a room-noise floor, levels -12 to -32 dBFS); tones are the plan's (ami.tones.PLANS) at
carrier levels; music is additive chords with vibrato; hold music is a PBX-style loop.

Attempts (label = the signature the detector must catch, with its onset in the clip):
  flash      speech, dead air 0.3-0.8 s, dial tone, digits, ringback, a third voice
  dial_tone  speech straight into a dial tone (no dead air)
  ringback   speech, then a third phone ringing (2 s on, 4 s off)
  busy / reorder / sit / digits   speech, then that signature
Benign (label "benign"): speech with natural pauses at several levels, speech over a TV or music,
  PBX music on hold, speech with cell-style drop-outs (20-200 ms of lost audio), an IVR whose
  prompts the called party answers with 1-3 digits.

    python -m bench.threeway.corpus OUT_DIR [--attempts N] [--benign N] [--seed S]
writes the clips and OUT_DIR/labels.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from ami.tones import DTMF_HIGH, DTMF_KEYS, DTMF_LOW, PLANS

RATE = 8000
SENTENCES = [
    "Hi mom, yes I got the letter you sent last week.",
    "The kids are doing fine, they miss you a lot.",
    "Did you talk to the lawyer about the hearing date?",
    "I put some money on the account this morning.",
    "Well, let me think about that for a second.",
    "Your brother says hello, he is working nights now.",
    "We are going to visit on Saturday if the car is fixed.",
    "Hold on, the dog is barking at the door again.",
]
VOICES = ["en-us", "en-us+f3", "en-us+m3", "en+f2", "en-us+m7"]


def db(level_dbfs: float) -> float:
    return 10 ** (level_dbfs / 20)


def silence(ms: int, floor_dbfs: float | None = -62.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Room noise at floor_dbfs (a speech pause), or digital silence (None: dead air)."""
    n = RATE * ms // 1000
    if floor_dbfs is None:
        return np.zeros(n)
    rng = rng or np.random.default_rng()
    return rng.standard_normal(n) * db(floor_dbfs)


def tone(freqs, ms: int, level_dbfs: float = -16.0) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return sum(db(level_dbfs) * np.sin(2 * np.pi * f * t) for f in freqs)


def cadence(freqs, on_ms: int, off_ms: int, total_ms: int, level_dbfs: float = -16.0) -> np.ndarray:
    out, left = [], total_ms
    while left > 0:
        out += [tone(freqs, min(on_ms, left), level_dbfs), silence(min(off_ms, max(0, left - on_ms)), None)]
        left -= on_ms + off_ms
    return np.concatenate(out)


def dtmf(keys: str, on_ms: int = 100, off_ms: int = 100, level_dbfs: float = -10.0) -> np.ndarray:
    parts = []
    for k in keys:
        row = next(i for i, r in enumerate(DTMF_KEYS) if k in r)
        parts += [tone((DTMF_LOW[row], DTMF_HIGH[DTMF_KEYS[row].index(k)]), on_ms, level_dbfs),
                  silence(off_ms, None)]
    return np.concatenate(parts)


def sit() -> np.ndarray:
    return np.concatenate([tone((913.8,), 274), tone((1370.6,), 274), tone((1776.7,), 380), silence(400, None)])


def speech(text: str, voice: str = "en-us", level_dbfs: float = -20.0, speed: int = 160) -> np.ndarray:
    """espeak-ng at 8 kHz, normalised to level_dbfs RMS, over the room's noise."""
    x = _espeak(text, voice, speed)
    rms = np.sqrt(np.mean(x ** 2)) + 1e-9
    return x * db(level_dbfs) / rms + silence(len(x) * 1000 // RATE + 1)[: len(x)]


@functools.lru_cache(maxsize=512)
def _espeak(text: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True,
                       capture_output=True)
        with wave.open(str(raw)) as w:
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float) / 32768
            rate = w.getframerate()
    x = np.interp(np.arange(0, len(x), rate / RATE), np.arange(len(x)), x)   # resample to 8 kHz
    nz = np.flatnonzero(np.abs(x) > 1e-4)
    return x[nz[0]:nz[-1] + 1] if nz.size else x     # espeak pads with digital silence; a mic never does


def music(ms: int, level_dbfs: float = -24.0, seed: int = 0) -> np.ndarray:
    """Chords with harmonics, vibrato and note changes: a radio or TV in the room, or hold music."""
    rng = np.random.default_rng(seed)
    out, notes = [], [220.0, 246.9, 261.6, 293.7, 329.6, 349.2, 392.0, 440.0]
    for _ in range(max(1, ms // 500)):
        t = np.arange(RATE // 2) / RATE
        chord = rng.choice(notes, 3, replace=False)
        vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * t)
        x = sum(a * np.sin(2 * np.pi * f * h * vib * t) for f in chord for h, a in ((1, 1), (2, .5), (3, .3)))
        out.append(x * np.hanning(len(t)) ** 0.3)
    x = np.concatenate(out)[: RATE * ms // 1000]
    return x * db(level_dbfs) / (np.sqrt(np.mean(x ** 2)) + 1e-9)


def conversation(rng: random.Random, seconds: int, level_dbfs: float, pause_floor: float | None = -62.0,
                 background: np.ndarray | None = None, dropouts: bool = False) -> np.ndarray:
    parts, total = [], 0
    nrng = np.random.default_rng(rng.randrange(1 << 30))
    while total < seconds * RATE:
        s = speech(rng.choice(SENTENCES), rng.choice(VOICES), level_dbfs + rng.uniform(-4, 4),
                   rng.choice((140, 160, 180)))
        pause = silence(rng.choice([300, 600, 1000, 1800, 3000]), pause_floor, nrng)
        parts += [s, pause]
        total += len(s) + len(pause)
    x = np.concatenate(parts)[: seconds * RATE]
    if background is not None:
        x = x + np.resize(background, len(x))
    if dropouts:  # cell-style: 20-200 ms of audio lost now and then (the jitter buffer plays nothing)
        for _ in range(seconds // 4):
            at, n = nrng.integers(0, len(x) - RATE), int(nrng.integers(160, 1600))
            x[at:at + n] = 0
    return x


def write(path: Path, x: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def attempt(kind: str, rng: random.Random, plan: str = "na") -> tuple[np.ndarray, float, str]:
    """(audio, onset of the signature in s, the rule expected to fire)."""
    p = PLANS[plan]
    lead = speech(rng.choice(SENTENCES), rng.choice(VOICES), rng.uniform(-26, -16))
    lead = np.concatenate([lead, silence(200)])
    if kind == "flash":
        gap = silence(rng.randrange(300, 800), None)
        x = [lead, gap, tone(p.dial, 2500), dtmf("5551234"), cadence(p.ringback, 2000, 4000, 6000),
             speech("Hello, who is this?", "en-us+m3")]
        return np.concatenate(x), len(lead) / RATE, "flash_sequence"
    body = {"dial_tone": lambda: tone(p.dial, 4000),
            "ringback": lambda: cadence(p.ringback, 2000 if plan == "na" else 1000, 4000, 12000),
            "busy": lambda: cadence(p.busy, 500, 500, 6000),
            "reorder": lambda: cadence(p.busy, 250, 250, 6000),
            "sit": lambda: np.concatenate([sit(), sit()]),
            "digits": lambda: dtmf("18005551212")}[kind]()
    rule = {"reorder": "busy", "digits": "inband_digits"}.get(kind, kind)
    return np.concatenate([lead, body, silence(2000)]), len(lead) / RATE, rule


def benign(kind: str, rng: random.Random, seconds: int = 60) -> np.ndarray:
    level = rng.choice([-14.0, -20.0, -26.0, -32.0])
    if kind == "pauses":
        return conversation(rng, seconds, level)
    if kind == "tv":
        return conversation(rng, seconds, level, background=music(seconds * 1000, level - 10, rng.randrange(99)))
    if kind == "hold_music":
        return music(seconds * 1000, rng.uniform(-26, -14), rng.randrange(99))
    if kind == "dropouts":
        return conversation(rng, seconds, level, dropouts=True)
    if kind == "ivr":  # the called party answers an IVR's prompts with a key or two
        parts = []
        while sum(len(q) for q in parts) < seconds * RATE:
            parts += [speech("For billing press one, for support press two.", "en-us+f3", -18),
                      silence(700), dtmf(rng.choice(["1", "2", "31", "9"])), silence(1500)]
        return np.concatenate(parts)[: seconds * RATE]
    raise ValueError(kind)


ATTEMPT_KINDS = ("flash", "dial_tone", "ringback", "busy", "reorder", "sit", "digits")
BENIGN_KINDS = ("pauses", "tv", "hold_music", "dropouts", "ivr")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--attempts", type=int, default=28)
    ap.add_argument("--benign", type=int, default=10)
    ap.add_argument("--benign-seconds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    labels = []
    for i in range(a.attempts):
        kind = ATTEMPT_KINDS[i % len(ATTEMPT_KINDS)]
        plan = "eu" if i % 4 == 3 and kind in ("flash", "dial_tone", "ringback", "busy") else "na"
        x, onset, rule = attempt(kind, rng, plan)
        labels.append({"file": write(a.out / f"attempt-{i:03d}-{kind}-{plan}.wav", x).name, "label": rule,
                       "kind": kind, "plan": plan, "onset_s": round(onset, 3), "seconds": len(x) / RATE})
    for i in range(a.benign):
        kind = BENIGN_KINDS[i % len(BENIGN_KINDS)]
        x = benign(kind, rng, a.benign_seconds)
        labels.append({"file": write(a.out / f"benign-{i:03d}-{kind}.wav", x).name, "label": "benign",
                       "kind": kind, "plan": "na", "onset_s": None, "seconds": len(x) / RATE})
    (a.out / "labels.json").write_text(json.dumps(labels, indent=1))
    print(f"{len(labels)} clips in {a.out}")


if __name__ == "__main__":
    main()
