"""Three-way signatures in the called leg's received audio: pure signal decisions, no I/O.

asterisk/res_ics_tonewatch.c is this detector ported to C, run inside Asterisk on the called leg
(ami.detector = "module", the default); a change here must be made there too
(bench/threeway/port.py and tests/unit/test_tonewatch_port.py compare the two).

The AMI listener taps each bridged inmate call's called leg (ChanSpy listen-only on the
received audio, into AudioSocket: ami/audiotap.py) and feeds the 8 kHz signed-linear
samples here. A Detector turns them into Detections, one per signature:

  dial_tone     the plan's dial tone held for dial_tone_ms
  ringback      the plan's ringback (NA: 440+480 held for ringback_ms; a single-frequency plan:
                one burst of the ringback cadence, then its silence)
  busy          busy or reorder: busy_bursts bursts of the busy cadence (on 0.2-0.6 s)
  sit           special information tones: the three ascending SIT tones in a row
  digits        each in-band DTMF digit (the rule counts them, ami.rules)
  dead_air      an abrupt drop from speech or sound to digital silence held for drop_min_ms
                (a speech pause fades and keeps room noise; a carrier's flash is dead air)

Each analysis window is 50 ms (nulls every 20 Hz, so 440 and 480 Hz fall apart) stepped
25 ms; a window is a tone when the tone's frequencies carry most of its energy (purity),
which speech and music (harmonics, vibrato) rarely reach. Tone plans are data (PLANS);
the facility picks one (tone_plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RATE = 8000
WIN = 400          # 50 ms analysis window
HOP = 200          # 25 ms step
HOP_MS = HOP * 1000 // RATE
FULL_SCALE = 32768.0
SOUND_BEFORE_DROP = 40   # windows (1 s): dead air counts as a drop only this soon after sound


@dataclass(frozen=True)
class Plan:
    """A country's call-progress tones (Hz). A plan whose dial, ringback and busy share one
    frequency (425 Hz) tells them apart by cadence."""
    name: str
    dial: tuple[float, ...]
    ringback: tuple[float, ...]
    busy: tuple[float, ...]
    ringback_on_ms: tuple[int, int]   # a ringback burst's length (single-frequency plans)


PLANS: dict[str, Plan] = {
    # ANSI T1.401 / North American precise tones
    "na": Plan("na", dial=(350.0, 440.0), ringback=(440.0, 480.0), busy=(480.0, 620.0),
               ringback_on_ms=(1600, 2400)),
    # CEPT/ETSI (most of Europe): 425 Hz for all; ringback 1 s on 4 s off, busy 0.5/0.5
    "eu": Plan("eu", dial=(425.0,), ringback=(425.0,), busy=(425.0,), ringback_on_ms=(800, 1300)),
}
SIT_BANDS = ((913.8, 985.2), (1370.6, 1428.5), (1776.7,))   # low/high variants of each SIT segment
DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")


@dataclass(frozen=True)
class Thresholds:
    plan: str = "na"
    dial_tone_ms: int = 800       # the dial tone held this long (the target is caught within 2 s)
    ringback_ms: int = 800        # a two-frequency ringback held this long
    busy_bursts: int = 2
    drop_min_ms: int = 300        # dead air at least this long after sound ...
    # ... below this level (a carrier's flash: digital silence). A-law has no zero: its idle code
    # decodes to +-8, -69.2 on this scale; -66 takes either law's idle, room noise (-62) is above
    drop_floor_dbfs: float = -66.0
    sound_dbfs: float = -45.0     # the sound before the drop was at least this loud
    min_tone_dbfs: float = -45.0  # a tone quieter than this is not looked at
    purity: float = 0.80          # share of a window's energy in the tone's frequencies


@dataclass(frozen=True)
class Detection:
    signature: str       # dial_tone, ringback, busy, sit, digits, dead_air
    onset_ms: int        # offset into the tapped audio (ms) where the signature began
    duration_ms: int     # how long it had lasted when detected
    level_dbfs: float
    detail: str = ""     # the digit, the SIT segments, ...

    def evidence(self, call_offset_ms: int = 0) -> dict[str, str]:
        out = {"event": "ToneDetect", "signature": self.signature,
               "offset_ms": str(call_offset_ms + self.onset_ms), "duration_ms": str(self.duration_ms),
               "level_dbfs": f"{self.level_dbfs:.1f}"}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class _Run:
    state: str
    start: int           # window index
    windows: int = 0
    level_sum: float = 0.0
    fired: bool = False

    def level(self) -> float:
        return self.level_sum / max(1, self.windows)


def _bank(freqs: list[float]) -> np.ndarray:
    n = np.arange(WIN)
    w = 2 * np.pi * np.asarray(freqs)[:, None] / RATE
    return np.concatenate([np.cos(w * n), np.sin(w * n)]).T   # (WIN, 2F)


@dataclass
class Detector:
    th: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        self.plan = PLANS[self.th.plan]
        self.freqs = sorted({*self.plan.dial, *self.plan.ringback, *self.plan.busy,
                             *(f for band in SIT_BANDS for f in band), *DTMF_LOW, *DTMF_HIGH})
        self.index = {f: i for i, f in enumerate(self.freqs)}
        self.bank = _bank(self.freqs)
        self.buf = np.zeros(0, dtype=np.float32)
        self.window = 0                       # windows analysed so far
        self.run: _Run | None = None
        self.prev_runs: list[_Run] = []       # finished runs, newest last (cadence decisions)
        self.loud_window = -10**9             # last window at sound level
        # single-frequency plan: dial, ringback and busy share frequencies, told apart by cadence
        self.shared = set(self.plan.dial) == set(self.plan.ringback)

    # --- feeding -------------------------------------------------------------
    def feed(self, pcm: bytes) -> list[Detection]:
        """Signed 16-bit little-endian mono samples at 8 kHz, any length."""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / FULL_SCALE
        self.buf = np.concatenate([self.buf, x]) if self.buf.size else x
        count = (self.buf.size - WIN) // HOP + 1 if self.buf.size >= WIN else 0
        if count <= 0:
            return []
        # the windows as a view on the buffer (as_strided: sliding_window_view's checks cost more
        # than the arithmetic on a 100 ms batch, and this runs 10 times a second per tapped call)
        step = self.buf.strides[0]
        frames = np.lib.stride_tricks.as_strided(self.buf, (count, WIN), (HOP * step, step), writeable=False)
        energy = np.einsum("ij,ij->i", frames, frames) + 1e-12
        proj = frames @ self.bank
        nf = len(self.freqs)
        power = (proj[:, :nf] ** 2 + proj[:, nf:] ** 2) * 2 / WIN      # a pure tone: == energy
        share = power / energy[:, None]
        level = 10 * np.log10(energy * 2 / WIN)       # dBFS of a sine's peak amplitude, roughly
        self.buf = self.buf[count * HOP:]
        out: list[Detection] = []
        # the per-window decisions on Python floats (a numpy scalar per element read cost more)
        for row, lv in zip(share.tolist(), level.tolist()):
            out.extend(self._window(self._classify(row, lv), lv))
        return out

    def _share(self, row: list[float], freqs) -> tuple[float, float]:
        parts = [row[self.index[f]] for f in freqs]
        return sum(parts), min(parts)

    def _classify(self, row: list[float], level: float) -> str:
        th = self.th
        if level < th.drop_floor_dbfs:
            return "dead"
        if level < th.min_tone_dbfs:
            return "quiet"
        best, state = th.purity, "sound"
        for name, freqs in (("dial", self.plan.dial), ("ringback", self.plan.ringback), ("busy", self.plan.busy)):
            total, least = self._share(row, freqs)
            if total >= best and least >= (0.15 * total if len(freqs) > 1 else 0):
                best, state = total, name
        if self.shared and state in ("dial", "ringback", "busy"):
            state = "tone"
        for k, band in enumerate(SIT_BANDS):
            total = max(row[self.index[f]] for f in band)
            if total >= best:
                best, state = total, f"sit{k + 1}"
        lo = max(DTMF_LOW, key=lambda f: row[self.index[f]])
        hi = max(DTMF_HIGH, key=lambda f: row[self.index[f]])
        pair = row[self.index[lo]] + row[self.index[hi]]
        if pair >= best and min(row[self.index[lo]], row[self.index[hi]]) >= 0.2 * pair:
            state = "dtmf" + DTMF_KEYS[DTMF_LOW.index(lo)][DTMF_HIGH.index(hi)]
        return state

    # --- runs of equal windows -------------------------------------------------
    def _window(self, state: str, level: float) -> list[Detection]:
        out: list[Detection] = []
        if self.run is None or self.run.state != state:
            if self.run is not None:
                out.extend(self._ended(self.run))
                self.prev_runs = (self.prev_runs + [self.run])[-12:]
            self.run = _Run(state, self.window)
        run = self.run
        run.windows += 1
        run.level_sum += level
        # speech or music for 100 ms or more: not a tone's cadence, nor the window straddling one
        if state == "sound" and run.windows >= 4 and level >= self.th.sound_dbfs:
            self.loud_window = self.window
        self.window += 1
        if not run.fired:
            out.extend(self._growing(run))
        return out

    def _ms(self, windows: int) -> int:
        return windows * HOP_MS

    def _det(self, signature: str, run: _Run, level: float | None = None, detail: str = "",
             onset: int | None = None) -> Detection:
        run.fired = True
        start = run.start if onset is None else onset
        return Detection(signature, self._ms(start), self._ms(self.window + 1 - start),
                         round(run.level() if level is None else level, 1), detail)

    def _growing(self, run: _Run) -> list[Detection]:
        """Decisions made while a run lasts: held tones and dead air."""
        th, dur = self.th, self._ms(run.windows)
        if run.state.startswith("dtmf") and run.windows >= 2:   # 75 ms of one key: a digit
            return [self._det("digits", run, detail=run.state[4:])]
        if run.state == "dial" and dur >= th.dial_tone_ms:
            return [self._det("dial_tone", run)]
        if run.state == "tone" and dur >= max(th.dial_tone_ms, self.plan.ringback_on_ms[1] + 100):
            return [self._det("dial_tone", run)]
        if run.state == "ringback" and dur >= th.ringback_ms:
            return [self._det("ringback", run)]
        if run.state == "dead" and dur >= th.drop_min_ms and run.start - self.loud_window <= SOUND_BEFORE_DROP \
                and self._after_sound():
            return [self._det("dead_air", run, detail=f"after sound at {self._ms(run.start)} ms")]
        return []

    def _after_sound(self) -> bool:
        """The dead air broke into speech or room sound, not into a tone's cadence (busy's off)."""
        before = [r for r in self.prev_runs if r.windows > 2]   # (a boundary straddles 2 windows)
        return bool(before) and before[-1].state in ("sound", "quiet")

    def _ended(self, run: _Run) -> list[Detection]:
        """Decisions made on a cadence: a run just ended."""
        dur, prev = self._ms(run.windows), self.prev_runs
        if run.state in ("busy", "tone") and 150 <= dur <= 650:
            bursts = [run] + [r for r in reversed(prev) if r.state == run.state][: self.th.busy_bursts - 1]
            if len(bursts) >= self.th.busy_bursts and all(150 <= self._ms(b.windows) <= 650 for b in bursts) \
                    and self._ms(run.start - bursts[-1].start) <= 1500 * (self.th.busy_bursts - 1):
                return [self._det("busy", run, onset=bursts[-1].start)]
        if run.state == "tone" and not run.fired and \
                self.plan.ringback_on_ms[0] <= dur <= self.plan.ringback_on_ms[1]:
            return [self._det("ringback", run)]
        if run.state == "sit3" and 150 <= dur <= 500:
            # the windows straddling two segments are neither: skip such short runs
            seq = [r for r in prev[-5:] if r.state.startswith("sit") or r.windows > 2]
            if [r.state for r in seq[-2:]] == ["sit1", "sit2"]:
                return [self._det("sit", run, onset=seq[-2].start, detail="sit1,sit2,sit3")]
        return []
