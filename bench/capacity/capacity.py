"""Capacity: what a call costs on our platform against Asterisk alone, same box. Prints figures.

    .venv/bin/python bench/capacity/capacity.py [--n 50,100,150,200,250] [--seconds 60]
        [--recording on|off] [--setups ours,plain] [--rate 10]

(`make capacity N=5,20 SECONDS=20`; kept out of `make bench`, which runs bench/*.py.)

A far-end Asterisk (a second process from the same root, bench/capacity/farend/:
SIP 127.0.0.1:5080, AMI 5039, RTP 40000-49999) plays both outside parties. For
each N and setup it places N calls at --rate calls/s to our Asterisk:

- ours: the far end is the inmate handset (keys the inmate number and PIN by RFC
  2833 after each prompt has begun); our call flow dials the called number back
  to the far end, which answers, hears the announcement out, presses 1 and
  echoes. Recording per --recording ("off" lists the bench's numbers as
  privileged, the production way to leave a call unrecorded).
- plain: the same calls through a plain bridge on our Asterisk (TALK_DETECT on
  both legs, Dial back to the far end), same speech and echo.

Once bridged the handset plays noise bursts (3 s on, 2 s off) for --seconds,
then hangs up. Per setup it prints: calls held (the handset got to the end of
its speech), RTP loss as the far end received it (its RTCP figures, read in each
leg's hangup handler), jitter p95 of what our Asterisk sent while bridged (each
packet timed as the kernel copied it: a probe on the wire; the far end's RTCP
figure, read when its own threads ran, is printed beside), talk-start lateness p99 (the
called side's TALK_DETECT against each burst's first packet out of the far end, captured), setup time p95
(dial to bridged), recording length against bridged time (ours), end lag p99
(ours: how long after the handset hung up the call record ends, which is where
the bill stops), and CPU per process from /proc (utime+stime, the idle rate
taken off) as % of a core per bridged call (over the window all N calls were
bridged) and CPU-s per call (first dial to last hang-up, menu included).
Then each setup's clean ceiling.

Our side needs the bench facility, inmates, numbers and accounts (seeded with
ics.store, the bench's own keys only) and a bench-only overlay: a trunk for the
far end and one endpoint per called number (bench/capacity/ours-*.conf),
#included into the rendered configs in the root and gone at the next
docker/stack.sh up or reload (run at the end).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ics import audio, config, recorder, records  # noqa: E402
from ics.store import Store, StoreError, connect  # noqa: E402
from tests.support import farend, load_stack_env, stack_dir  # noqa: E402

STACK = stack_dir()
AST = STACK / "asterisk"
SPEECH = "/var/lib/asterisk-farend/speech"  # Playback() name, without .wav
FAR_AMI_PORT = 5039
FAR_RTP = (40000, 49999)  # bench/capacity/farend/rtp.conf
FAR_NICE = -10

FACILITY = "bench"
PIN = "2468"
PREFIX = {"ours": "3125551", "plain": "3125552"}  # + 3 digits: the call's index
BURST_ON_S, BURST_PERIOD_S = 3, 5
ROOM_NOISE = 33  # sample s.d. between bursts: -60 dBFS, under talk detection's -42 and over dead air's -66
TALK_SILENCE_S = 1  # the far end's TALK_DETECT(set)=1000: a talk stop after 1 s of silence
HZ = os.sysconf("SC_CLK_TCK")
DTMF_PT = 101  # telephone-event, as the far end's Asterisk offers it


def number(setup: str, i: int) -> str:
    return f"{PREFIX[setup]}{i:03d}"


def inmate_id(i: int) -> str:
    return f"7{i:05d}"


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1)]


def in_root(*cmd: str, check: bool = True, timeout: float = 30) -> str:
    out = subprocess.run(["chroot", str(AST), *cmd], capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def ours_cli(cmd: str) -> str:
    return in_root("asterisk", "-rx", cmd)


def channel_count(cli) -> int:
    for line in cli("core show channels count").splitlines():
        if "active channel" in line:
            return int(line.split()[0])
    return 0


# ---------------------------------------------------------------- the far end

class FarEnd(farend.FarEnd):
    """A second Asterisk from our root with its own dirs and ports (bench/capacity/farend/)."""

    def __init__(self, seconds: int):
        # the phones and the carrier have hardware of their own in service: here the far end runs
        # ahead of everything of ours (nice -10), so that when the box runs short it is our side
        # that runs late. At the same priority its own stalls were charged to us: a Playback that
        # falls behind sends fewer frames and never catches up, so recordings came out short,
        # jitter rose and speech was late by the load generator's account (both setups alike)
        super().__init__("farend", HERE / "farend", ami_port=FAR_AMI_PORT, ami_user="bench", nice=FAR_NICE)
        self.seconds = seconds

    def start(self) -> None:
        for d in self.dirs:
            self.path(d).mkdir(parents=True, exist_ok=True)
        write_speech(self.path(f"{SPEECH}.wav"), self.seconds)
        super().start()


def write_speech(path: Path, seconds: int) -> None:
    """8 kHz 16-bit mono: noise bursts, BURST_ON_S on every BURST_PERIOD_S, and between them a
    handset's room noise (ROOM_NOISE, about -60 dBFS). A line is never digitally silent between
    words; a drop to digital silence is the dead_air signature of a hook flash, so pauses of
    zeros made the three-way rules flag every pause (12 a call-minute)."""
    rng = random.Random(1)
    frames = bytearray()
    for n in range(seconds * 8000):
        on = (n / 8000) % BURST_PERIOD_S < BURST_ON_S
        frames += struct.pack("<h", int(rng.gauss(0, 3000 if on else ROOM_NOISE)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(frames))


# ---------------------------------------------------------------- our side

def install_overlay(n_max: int) -> None:
    """The bench's trunk and called numbers into our running Asterisk (see ours-pjsip.conf)."""
    etc = AST / "etc/asterisk"
    called = [number("ours", i) for i in range(n_max)]
    pj = (HERE / "ours-pjsip.conf").read_text() + "".join(
        f"\n[{n}](ics-bench-called)\naors = {n}\n[{n}]\ntype = aor\ncontact = sip:{n}@127.0.0.1:5080\n"
        for n in called)
    (etc / "ics-bench-pjsip.conf").write_text(pj)
    shutil.copy(HERE / "ours-extensions.conf", etc / "ics-bench-extensions.conf")
    for conf, part in (("pjsip.conf", "ics-bench-pjsip.conf"), ("extensions.conf", "ics-bench-extensions.conf")):
        text = (etc / conf).read_text()
        line = f'#include "{part}"\n'
        if line not in text:
            (etc / conf).write_text(text + "\n" + line)
    in_root("chown", "asterisk:asterisk", "/etc/asterisk/ics-bench-pjsip.conf",
            "/etc/asterisk/ics-bench-extensions.conf")
    ours_cli("module reload res_pjsip.so")
    ours_cli("dialplan reload")


def seed(store: Store, cfg, n_max: int, recording: bool) -> None:
    """The bench facility, one inmate, approved number and funded prepaid account per call."""
    if FACILITY not in store.facilities():
        store.create_facility(FACILITY, "Bench County Jail", type="jail", adp=200, rate_cents_per_min=11)
    names = cfg.sounds_dir / "names"
    first = names / f"{inmate_id(0)}.wav"
    if not first.exists():
        audio.speak("Alex Bench", first)
    fac = cfg.sounds_dir / "facilities" / f"{FACILITY}.wav"
    if not fac.exists():
        audio.speak("Bench County Jail", fac)
    for i in range(n_max):
        iid, num, aid = inmate_id(i), number("ours", i), f"bench{i}"
        store.create_inmate(iid, FACILITY, "Alex Bench", PIN, replace=True)
        store.approve_number(iid, num)
        store.set_name_recorded(iid)
        if not (names / f"{iid}.wav").exists():
            shutil.copy(first, names / f"{iid}.wav")
        try:
            store.create_account(aid, "Bench Family", [num])
        except StoreError:
            pass  # from an earlier run
        if store.account(aid).balance_cents < 1000:
            store.adjust(aid, "deposit", 2000, "capacity bench")
        if recording:
            store.remove_privileged(num)
        else:
            store.set_privileged(num, "capacity bench: recording off")


def rtp_ports(n: int) -> None:
    """Each call is two RTP sessions on ours, each an even port and the odd one after it:
    a range too small for N refuses calls for want of ports, not of CPU."""
    conf = {}
    for line in (AST / "etc/asterisk/rtp.conf").read_text().splitlines():
        key, _, value = line.split(";")[0].replace(" ", "").partition("=")
        conf[key] = value
    sessions = (int(conf["rtpend"]) - int(conf["rtpstart"]) + 1) // 2
    if 2 * n > sessions:
        print(f"note: our rtp.conf has room for {sessions} RTP sessions; N={n} needs {2 * n}")


def wav_s(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


# ---------------------------------------------------------------- CPU

def ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


class Sampler(threading.Thread):
    """utime+stime of each process every 0.5 s; cpu_s() interpolates between samples."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.time(), {k: ticks(p) for k, p in self.pids.items()}))
            if self.halt.wait(0.5):
                self.samples.append((time.time(), {k: ticks(p) for k, p in self.pids.items()}))
                return

    def at(self, t: float, name: str) -> float:
        s = self.samples
        for (t0, a), (t1, b) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return (a[name] + (b[name] - a[name]) * (t - t0) / max(t1 - t0, 1e-9)) / HZ
        return (s[0][1][name] if t < s[0][0] else s[-1][1][name]) / HZ

    def cpu_s(self, name: str, t0: float, t1: float) -> float:
        return self.at(t1, name) - self.at(t0, name)


class Speech(threading.Thread):
    """Every RTP packet between the far end's range and ours, copied by the kernel (libpcap, as
    ics-recorder does), by the far end's port.

    From the far end (time, loud?): when each burst of the handset's speech really left it. A
    burst starts at a loud packet after TALK_SILENCE_S of quiet ones on its port. Talk lateness
    counts from there, so it is our delay alone: the far end's own Playback falls behind its
    file after a stall of the shared box and never catches up (0.9 s at p99 at 175 calls, even
    at nice -10), which lateness against the file's schedule charged to us.

    To the far end (time, RTP timestamp, SSRC): the jitter of what our Asterisk sent, as a
    probe on the wire would see it (send_jitter_ms). The far end's RTCP jitter is when its own
    threads read each packet, and it stalls on this shared box too."""

    def __init__(self, our_rtp: tuple[int, int]):
        super().__init__(daemon=True)
        import pcapy  # the recorder's dependency

        self.cap = pcapy.create("lo")
        self.cap.set_snaplen(256)
        self.cap.set_timeout(100)
        self.cap.set_buffer_size(64 << 20)
        self.cap.activate()
        far, ours = f"portrange {FAR_RTP[0]}-{FAR_RTP[1]}", f"portrange {our_rtp[0]}-{our_rtp[1]}"
        self.cap.setfilter(f"udp and ((src {far} and dst {ours}) or (src {ours} and dst {far}))")
        self.batches: list[tuple[np.ndarray, ...]] = []  # time, far port, loud, to the far end, ts, ssrc
        self.keys: list[tuple[np.ndarray, np.ndarray]] = []  # the far end's RFC 2833 packets: time, far port
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            data, meta = self.cap.next_batch(4096)
            if not meta:
                continue
            m, d, _, udp, end = recorder.udp_headers(data, meta, 14)  # lo's link header: Ethernet
            key = ((d[udp + 8 + 1] & 0x7F) == DTMF_PT) & (recorder.big_endian(d, udp, 2) >= FAR_RTP[0])
            self.keys.append((m[key, 0] + m[key, 1] / 1e6, recorder.big_endian(d, udp[key], 2)))
            body = udp + 8 + 12
            ok = end - body >= 160  # 20 ms of G.711
            m, udp, body = m[ok], udp[ok], body[ok]
            sport, dport = recorder.big_endian(d, udp, 2), recorder.big_endian(d, udp + 2, 2)
            out = sport < FAR_RTP[0]  # ours to the far end
            loud = np.abs(recorder.DECODE[0][d[body[:, None] + np.arange(0, 160, 8)]]).mean(axis=1) > 300
            self.batches.append((m[:, 0] + m[:, 1] / 1e6, np.where(out, dport, sport), loud, out,
                                 recorder.big_endian(d, udp + 8 + 4, 4), recorder.big_endian(d, udp + 8 + 8, 4)))

    def stop(self) -> tuple[dict[int, list[float]], dict[int, np.ndarray], dict[int, tuple[np.ndarray, ...]],
                            dict[int, float]]:
        """By the far end's port: burst starts and every packet's time (20 ms of audio each) of
        what it sent; (time, RTP timestamp, SSRC) of what it was sent, in time order; when it
        first sent a key (RFC 2833)."""
        self.halt.set()
        self.join(2)
        first_key: dict[int, float] = {}
        for t, port in self.keys:
            for ti, pi in zip(t.tolist(), port.tolist()):
                first_key[pi] = min(ti, first_key.get(pi, ti))
        if not self.batches:
            return {}, {}, {}, first_key
        t, port, loud, out, ts, ssrc = (np.concatenate(c) for c in zip(*self.batches))
        starts: dict[int, list[float]] = {}
        sent: dict[int, np.ndarray] = {}
        received: dict[int, tuple[np.ndarray, ...]] = {}
        for p in np.unique(port):
            mine = port == p
            sent[int(p)] = np.sort(t[mine & ~out])
            tp = np.sort(t[mine & ~out & loud])
            first = np.r_[True, np.diff(tp) > TALK_SILENCE_S]
            starts[int(p)] = tp[first].tolist()
            to = mine & out
            order = np.argsort(t[to], kind="stable")
            received[int(p)] = (t[to][order], ts[to][order], ssrc[to][order])
        return starts, sent, received, first_key


def send_jitter_ms(stream: tuple[np.ndarray, ...], t0: float, t1: float) -> float:
    """The worst interarrival jitter (RFC 3550's running estimate, as CHANNEL(rtcp,all_jitter)'s
    maxrxjitter) of one stream our Asterisk sent between t0 and t1, timed where the kernel copied
    each packet (sent, as a probe on the wire sees it). A new SSRC or a timestamp jump (a new
    source: the bridge) starts the estimate again; inf: no packets (the worst there is)."""
    t, ts, ssrc = (a[(stream[0] >= t0) & (stream[0] < t1)] for a in stream)
    if len(t) < 2:
        return float("inf")
    dts = ((ts[1:] - ts[:-1] + 2**31) % 2**32 - 2**31) / 8000  # the stream's own clock, s
    d = np.abs(np.diff(t) - dts)
    same = (ssrc[1:] == ssrc[:-1]) & (dts >= 0) & (dts <= 2)
    j = worst = 0.0
    for dk, ok in zip(d.tolist(), same.tolist()):
        j = j + (dk - j) / 16 if ok else 0.0
        worst = max(worst, j)
    return worst * 1000


def service_pids(far: FarEnd) -> dict[str, int]:
    pids = {}
    for name in ("asterisk", "fastagi", "ami", "recorder", "redis"):
        try:
            pids[name] = int((STACK / "run" / f"{name}.pid").read_text())
        except (OSError, ValueError):
            pass
    pids["farend"] = far.proc.pid
    return pids


# ---------------------------------------------------------------- one run

class Result:
    def __init__(self, setup: str, n: int):
        self.setup, self.n = setup, n
        self.held = 0
        self.loss_pct = self.jitter_p95_ms = self.talk_p99_s = self.setup_p95_s = float("nan")
        self.rtcp_jitter_p95_ms = float("nan")  # the far end's figure: its own stalls in it
        self.setup_min_s = float("nan")
        self.rec_short_s: float | None = None  # worst bridged time - recording (settlement's measure)
        self.rec_lost_s: float | None = None   # worst audio the handset sent while bridged - recording
        # settlement's own check (ics/recordings.py) against the bench's: flagged, missed, flagged but fine here
        self.rec_flagged = self.rec_unflagged = self.rec_overflagged = 0
        self.bridged_mean_s = float("nan")
        self.far_drift_p99_s = float("nan")  # the far end's Playback behind its own file at the end
        self.end_lag_p99_s: float | None = None  # ours: the bill's end (record) after the handset's hang-up
        self.cpu_bridged: dict[str, float] = {}  # % of a core per bridged call
        self.cpu_call: dict[str, float] = {}     # CPU-s per call, menu included
        self.problems: list[str] = []


def run_setup(setup: str, n: int, args, far: FarEnd, store: Store, cfg) -> Result:
    res = Result(setup, n)
    tap = far.tap
    wait_idle(far)
    pids = service_pids(far)
    sampler = Sampler(pids)
    sampler.start()
    time.sleep(3)  # the idle rate, taken off every figure
    t_idle = time.time()
    idle = {k: sampler.cpu_s(k, t_idle - 3, t_idle) / 3 for k in pids}

    speech = Speech(config.read_rtp_range(cfg["capacity"]["rtp_conf"]))
    speech.start()
    mark = tap.mark()
    dialed: dict[str, float] = {}
    gap = 1 / args.rate
    t_first = time.time()
    for i in range(n):
        num = number(setup, i)
        ctx = "handset" if setup == "ours" else "handset-plain"
        dialed[num] = time.time()
        tap.action("Originate", Channel=f"PJSIP/{num}@ours", Context=ctx, Exten="s", Priority=1,
                   Variable=[f"NUM={num}", f"INMATE={inmate_id(i)}", f"PIN={PIN}"], Async="true", Timeout=30000)
        time.sleep(max(0.0, t_first + (i + 1) * gap - time.time()))
    # every handset reports from its hangup handler; one that never answered never will
    deadline = time.time() + args.seconds + 120
    while time.time() < deadline:
        legs = tap.events({"Event": "UserEvent", "UserEvent": "BenchLeg"}, since=mark)
        if sum(e["Side"] == "handset" for e in legs) >= n:
            break
        if time.time() - t_first > n * gap + 30 and channel_count(far.cli) == 0:
            break
        time.sleep(1)
    time.sleep(2)  # the called legs' reports, settlement, MixMonitor closing its files
    legs = tap.events({"Event": "UserEvent", "UserEvent": "BenchLeg"}, since=mark)
    talks = tap.events({"Event": "ChannelTalkingStart"}, since=mark)
    onsets, packets, outgoing, first_key = speech.stop()
    recs = {}
    if setup == "ours":
        recs = wait_records(store, set(dialed), t_first)
    sampler.halt.set()
    sampler.join()

    hand = {e["Num"]: e for e in legs if e["Side"] == "handset"}
    called = {e["Num"]: e for e in legs if e["Side"] == "called"}
    starts: dict[str, list[float]] = {}
    for e in talks:
        starts.setdefault(e["Channel"], []).append(float(e["Timestamp"]))

    bridged_at, ended_at, setups, lateness, jitters, lags, drifts = {}, {}, [], [], [], [], []
    rtcp_jitters: list[float] = []
    spoke_s: dict[str, float] = {}  # audio the handset sent while bridged (its packets, captured)
    lost = received = 0
    for num, t_dial in dialed.items():
        h, c = hand.get(num), called.get(num)
        if setup == "ours":
            r = recs.get(num, {})
            if r.get("bridged_ms") and r.get("ended_ms"):
                bridged_at[num], ended_at[num] = r["bridged_ms"] / 1000, r["ended_ms"] / 1000
                if h and h.get("Held") == "1":  # the handset hung up first: billing should end then
                    lags.append(ended_at[num] - float(h["Timestamp"]))
        elif h and h.get("Answered"):  # plain: answered is bridged
            bridged_at[num], ended_at[num] = float(h["Answered"]), float(h["Timestamp"])
        if num in bridged_at:
            setups.append(bridged_at[num] - t_dial)
        if h and h.get("Held") == "1" and c and num in bridged_at:
            res.held += 1
        elif setup == "ours" and c and c.get("Answered"):  # not held: did the called side press 1, and when?
            key = first_key.get(int(c.get("Rtp", "").rpartition(":")[2] or 0))
            res.problems.append(f"{num} not held: the called side answered, then " + (
                "sent no key" if key is None else f"sent its first key {key - float(c['Answered']):.1f} s later"))
        for leg in (h, c):
            if leg:
                lost += int(leg.get("RxLost") or 0)
                received += int(leg.get("RxCount") or 0)
                rtcp_jitters.append(max_rx_jitter_ms(leg.get("Jitter", "")))
                if num in bridged_at:  # from 1 s into the bridge: one source
                    stream = outgoing.get(int(leg.get("Rtp", "").rpartition(":")[2] or 0), (np.zeros(0),) * 3)
                    jitters.append(send_jitter_ms(stream, bridged_at[num] + 1, ended_at[num] - 0.5))
        if h and h.get("Held") == "1" and h.get("Speech"):  # its speech file took this much longer
            drifts.append(float(h["Timestamp"]) - float(h["Speech"]) - args.seconds)
        if h and c and h.get("Speech") and num in bridged_at:
            port = int(h.get("Rtp", "").rpartition(":")[2] or 0)
            sent = onsets.get(port, [])
            times = packets.get(port, np.zeros(0))
            spoke_s[num] = 0.02 * int(((times >= bridged_at[num]) & (times < ended_at[num])).sum())
            late = burst_lateness(sent, bridged_at[num], ended_at[num], starts.get(c["Channel"], []))
            lateness += late
            if args.dump:  # each burst: when it was sent (s after the first dial) and how late it was heard
                with open(args.dump, "a") as fh:
                    fh.write(json.dumps(dict(setup=setup, n=n, num=num, dial=t_dial - t_first,
                                             bridged=bridged_at[num] - t_first, late=late,
                                             sent=[t - t_first for t in sent])) + "\n")
    res.loss_pct = 100 * lost / max(1, lost + received)
    res.jitter_p95_ms = pct(jitters, 95)
    res.rtcp_jitter_p95_ms = pct(rtcp_jitters, 95)
    res.talk_p99_s = pct(lateness, 99)
    res.far_drift_p99_s = pct(drifts, 99) if drifts else float("nan")
    res.setup_p95_s = pct(setups, 95)
    res.setup_min_s = min(setups, default=float("nan"))
    res.end_lag_p99_s = pct(lags, 99) if lags else None
    spans = [ended_at[k] - bridged_at[k] for k in bridged_at]
    res.bridged_mean_s = sum(spans) / len(spans) if spans else float("nan")
    if setup == "ours" and any(r.get("recording") for r in recs.values()):
        recs = wait_checked(store, recs)
        res.rec_short_s, shorts, res.rec_lost_s = recording_shortfall(cfg, recs, spoke_s)
        flagged = {num for num, r in recs.items() if r.get("recording_check") in ("short", "missing")}
        res.rec_flagged, res.rec_unflagged = len(flagged), len(set(shorts) - flagged)
        res.rec_overflagged = len(flagged - set(shorts))

    # CPU: the window all N were bridged, and the whole calls (first dial to last hang-up)
    if len(bridged_at) == n:
        w0, w1 = max(bridged_at.values()), min(ended_at.values())
        if w1 - w0 >= 2:
            res.cpu_bridged = {k: 100 * (sampler.cpu_s(k, w0, w1) / (w1 - w0) - idle[k]) / n for k in pids}
        else:
            res.problems.append(f"no window with all {n} bridged (calls overlap {w1 - w0:.1f} s)")
    t_last = max(ended_at.values(), default=time.time()) + 1
    res.cpu_call = {k: (sampler.cpu_s(k, t_first, t_last) - idle[k] * (t_last - t_first)) / n for k in pids}
    if setup == "ours":
        cleanup_recordings(cfg)
    return res


def max_rx_jitter_ms(all_jitter: str) -> float:
    """The leg's worst interarrival jitter of what it received (CHANNEL(rtcp,all_jitter), s)."""
    fields = dict(kv.split("=", 1) for kv in all_jitter.split(";") if "=" in kv)
    return float(fields.get("maxrxjitter", "nan")) * 1000


def burst_lateness(sent: list[float], bridged: float, ended: float, starts: list[float]) -> list[float]:
    """For each burst sent wholly while bridged: its first talk start on the called side
    minus when it left the far end (Speech; a burst never detected counts as BURST_ON_S late).
    Bursts from TALK_SILENCE_S after the bridge on: one sooner can run into the talk of the
    last prompt ("Connecting."), and talk detection sees one start for both."""
    out = []
    for t in sent:
        if t >= bridged + TALK_SILENCE_S and t + BURST_ON_S <= ended:
            hits = [s - t for s in starts if t - 0.2 <= s < t + BURST_ON_S]
            out.append(min(hits) if hits else BURST_ON_S)
    return out


def wait_records(store: Store, numbers: set[str], since: float) -> dict[str, dict]:
    """Our call records of this run, by called number, once settled (15 s at most)."""
    deadline = time.time() + 15
    while True:
        recs = {}
        for r in records.recent(store.r, 4 * len(numbers) + 50):
            dialled = r.get("number", "").removeprefix("+1")  # records keep E.164; the bench 10 digits
            if dialled in numbers and r.get("started_ms", 0) >= since * 1000 - 1000:
                recs.setdefault(dialled, r)
        if all(r.get("settled") == "1" for r in recs.values()) or time.time() > deadline:
            return recs
        time.sleep(0.5)


def wait_checked(store: Store, recs: dict[str, dict], timeout: float = 30) -> dict[str, dict]:
    """The records again once settlement (or the listener, for a file still open) has checked each
    recording: the files are deleted after the run, and a check that came later would find none."""
    deadline = time.time() + timeout
    while True:
        fresh = {num: records.get(store.r, r["call_id"]) or r for num, r in recs.items()}
        if all(r.get("recording_check") or not r.get("recording") for r in fresh.values()) \
                or time.time() > deadline:
            return fresh
        time.sleep(0.5)


def recording_shortfall(cfg, recs: dict[str, dict], spoke_s: dict[str, float]) -> tuple[float, list[str], float]:
    """Worst (bridged time - recording length), s, a missing file counting as all of it; the
    numbers whose recording is short by more than recordings.max_short_ms; and the worst
    (audio the handset sent while bridged - recording length): what reached us and is not in
    the file. The two differ by what the far end never sent (its own stalls)."""
    worst, shorts, lost = 0.0, [], 0.0
    limit_s = cfg["recordings"]["max_short_ms"] / 1000
    for num, r in recs.items():
        if not (r.get("bridged_ms") and r.get("ended_ms")):
            continue
        bridged = (r["ended_ms"] - r["bridged_ms"]) / 1000
        path = cfg.recordings_dir / r.get("recording", "")
        length = wav_s(path) if r.get("recording") and path.is_file() else 0.0
        worst = max(worst, bridged - length)
        lost = max(lost, spoke_s.get(num, bridged) - length)
        if bridged - length > limit_s:
            shorts.append(num)
    return worst, shorts, lost


def cleanup_recordings(cfg) -> None:
    # a run of 250 60-s calls files 240 MB of the bench facility's recordings: measured, then gone
    shutil.rmtree(cfg.recordings_dir / "ics" / FACILITY, ignore_errors=True)


def wait_idle(far: FarEnd, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while channel_count(ours_cli) or channel_count(far.cli):
        if time.time() > deadline:
            raise RuntimeError("channels still up on one of the Asterisks after 60 s")
        time.sleep(1)


def prompt_s(cfg, key: str) -> float:
    return wav_s(cfg.sounds_dir / "prompts" / f"{key}.wav")


def set_globals(far: FarEnd, cfg, recording: bool) -> None:
    """How long the far end's called side listens before pressing 1, and the handset waits
    after it: the announcement's parts (agi/flows/callee.py announce()), "Connecting."."""
    announce = (prompt_s(cfg, "announce-from") + wav_s(cfg.sounds_dir / "names" / f"{inmate_id(0)}.wav")
                + prompt_s(cfg, "announce-at") + wav_s(cfg.sounds_dir / "facilities" / f"{FACILITY}.wav"))
    if recording:
        announce += prompt_s(cfg, "announce-recorded")
    for var, value in (("ANNOUNCE_S", f"{announce + 0.5:.1f}"),
                       ("CONNECT_S", f"{prompt_s(cfg, 'connecting') + 0.2:.1f}"), ("SPEECH", SPEECH)):
        far.tap.action("Setvar", Variable=var, Value=value)


# ---------------------------------------------------------------- report

PROCS = ("asterisk", "farend", "fastagi", "ami", "recorder", "redis")


def clean(r: Result, setup_ref: float, recording: bool) -> list[str]:
    """Why a run was not clean (empty: clean)."""
    why = []
    if r.held < r.n:
        why.append(f"held {r.held}/{r.n}")
    if not r.loss_pct <= 0.1:
        why.append(f"loss {r.loss_pct:.2f} %")
    if not r.jitter_p95_ms <= 20:
        why.append(f"jitter p95 {r.jitter_p95_ms:.1f} ms")
    if not r.talk_p99_s <= 0.1:
        why.append(f"talk p99 {r.talk_p99_s:.2f} s late")
    if not r.setup_p95_s <= setup_ref + 3:
        why.append(f"setup p95 {r.setup_p95_s:.1f} s (unloaded {setup_ref:.1f})")
    if r.setup == "ours" and recording and not (r.rec_lost_s is not None and r.rec_lost_s <= 1):
        why.append(f"a recording short of what was sent by {r.rec_lost_s:.2f} s")
    return why


def print_run(results: list[Result], recording: bool, seconds: int) -> None:
    n = results[0].n
    print(f"\n== N={n}, {seconds} s bridged, recording {'on' if recording else 'off'}")
    print(f"   {'setup':6s} {'held':>9s} {'bridged':>8s} {'loss %':>7s} {'jit p95':>8s} {'talk p99':>9s}"
          f" {'setup p95':>10s} {'rec short':>10s} {'end lag p99':>12s}")
    for r in results:
        rec = "-" if r.rec_short_s is None else f"{r.rec_short_s:.2f} s"
        lag = "-" if r.end_lag_p99_s is None else f"{r.end_lag_p99_s:.3f} s"
        print(f"   {r.setup:6s} {r.held:>4d}/{r.n:<4d} {r.bridged_mean_s:>6.1f} s {r.loss_pct:>7.3f}"
              f" {r.jitter_p95_ms:>5.1f} ms {r.talk_p99_s:>7.3f} s {r.setup_p95_s:>8.1f} s {rec:>10s} {lag:>12s}")
    print("   CPU: % of a core per bridged call | CPU-s per call, menu included")
    print("   " + f"{'':6s}" + "".join(f"{p:>18s}" for p in PROCS))
    for r in results:
        cells = []
        for p in PROCS:
            b = r.cpu_bridged.get(p)
            c = r.cpu_call.get(p)
            cells.append(f"{'-' if b is None else f'{b:.3f}':>8s} | {'-' if c is None else f'{c:.3f}':<6s}")
        print(f"   {r.setup:6s}" + "".join(f"{c:>18s}" for c in cells))
        if r.rec_short_s is not None:
            print(f"   {r.setup:6s} recordings flagged short or missing by settlement: {r.rec_flagged};"
                  f" short here but not flagged: {r.rec_unflagged}; flagged but not short here: {r.rec_overflagged}")
            print(f"   {r.setup:6s} recordings against the audio the far end sent while bridged: worst"
                  f" {r.rec_lost_s:.2f} s short")
        print(f"   {r.setup:6s} the far end's own speech ran {r.far_drift_p99_s:.3f} s behind its file at p99"
              " (its stalls: in the recordings' length, not in talk p99)")
        print(f"   {r.setup:6s} jitter p95 by the far end's RTCP (whole legs, read when its threads ran):"
              f" {r.rtcp_jitter_p95_ms:.1f} ms")
        for why in r.problems:
            print(f"   {r.setup:6s} note: {why}")


def ceiling_of(clean_runs: dict[int, list[bool]]) -> int:
    """The highest N clean in most of its runs (0: none)."""
    return max((n for n, runs in clean_runs.items() if 2 * sum(runs) > len(runs)), default=0)


def print_ceilings(runs: list[list[Result]], setups: list[str], recording: bool) -> None:
    """A setup is clean at N when most of its runs at N were (--repeat: one run on this box can
    be clean or not at the same N); its ceiling is the highest such N."""
    print("\n== clean ceiling (every call held, loss <= 0.1 %, jitter p95 <= 20 ms (sent while bridged), talk starts <= 0.1 s "
          "late at p99, setup p95 within 3 s of unloaded" + (", recordings >= what was sent while bridged - 1 s)"
                                                            if recording else ")"))
    ceiling = {}
    for setup in setups:
        mine = [r for rs in runs for r in rs if r.setup == setup]
        ref = min((r.setup_min_s for r in mine), default=float("nan"))
        whys = {}
        for r in mine:
            whys.setdefault(r.n, []).append(clean(r, ref, recording))
            why = whys[r.n][-1]
            print(f"   {setup:6s} N={r.n:<4d} {'clean' if not why else 'not clean: ' + '; '.join(why)}")
        for n, ws in sorted(whys.items()):
            if len(ws) > 1:
                print(f"   {setup:6s} N={n:<4d} clean in {sum(not w for w in ws)} of {len(ws)} runs")
        ceiling[setup] = ceiling_of({n: [not w for w in ws] for n, ws in whys.items()})
        ast = [r.cpu_bridged["asterisk"] for r in mine if "asterisk" in r.cpu_bridged]
        per_call = [r.cpu_call["asterisk"] for r in mine if "asterisk" in r.cpu_call]
        top = max(r.n for r in mine)
        shown = (f">= {top}" if ceiling[setup] == top else str(ceiling[setup]) if ceiling[setup]
                 else f"< {min(r.n for r in mine)}")
        print(f"   {setup:6s} ceiling {shown} calls;"
              f" Asterisk {min(ast, default=float('nan')):.2f}-{max(ast, default=float('nan')):.2f} % of a core"
              f" per bridged call, {min(per_call, default=float('nan')):.2f}-"
              f"{max(per_call, default=float('nan')):.2f} CPU-s per call")
    # the box's ceiling follows the CPU every process spends on a call, the far end's included
    total = {setup: sorted(sum(r.cpu_bridged.values()) for rs in runs for r in rs if r.setup == setup and r.cpu_bridged)
             for setup in setups}
    for setup, t in total.items():
        if t:
            print(f"   {setup:6s} every process, far end included: {t[0]:.2f}-{t[-1]:.2f} % of a core per bridged call")
    if total.get("ours") and total.get("plain"):
        print(f"   plain/ours, medians of those: {pct(total['plain'], 50) / pct(total['ours'], 50):.2f}")
    both = []
    for rs in runs:
        by = {r.setup: r.cpu_bridged.get("asterisk") for r in rs}
        if by.get("ours") and by.get("plain"):
            both.append((rs[0].n, by["ours"] / by["plain"]))
    if both:
        print("   ours/plain Asterisk CPU per bridged call: " + ", ".join(f"{r:.2f} (N={n})" for n, r in both))
    if ceiling.get("ours") and ceiling.get("plain"):
        capped = ceiling["plain"] == max(r.n for rs in runs for r in rs)
        print(f"   ours/plain ceiling: {ceiling['ours'] / ceiling['plain']:.2f}"
              + (" (plain was clean at every N run: at most this)" if capped else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="50,100,150,200,250", help="calls per run, comma-separated")
    ap.add_argument("--seconds", type=int, default=60, help="bridged time of each call")
    ap.add_argument("--recording", choices=("on", "off"), default="on")
    ap.add_argument("--setups", default="ours,plain")
    ap.add_argument("--rate", type=float, default=10, help="calls placed per second")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per N and setup (setups take turns going first); clean at N: most runs were")
    ap.add_argument("--dump", help="append each call's bursts and their lateness to this file (JSON lines)")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    setups = [s for s in args.setups.split(",") if s]
    if not set(setups) <= set(PREFIX) or max(ns) > 1000 or args.seconds < 10 or not 1 <= args.repeat <= 9:
        ap.error("setups are ours and plain; N at most 1000; at least 10 s; repeat 1-9")
    recording = args.recording == "on"
    load_stack_env()
    cfg = config.load()
    store = Store(connect(cfg), cfg)
    rtp_ports(max(ns))
    if "ours" in setups and max(ns) > cfg["capacity"]["max_calls"]:
        print(f"note: ours refuses calls past capacity.max_calls={cfg['capacity']['max_calls']} (capacity_full); "
              f"N={max(ns)} needs ICS_CAPACITY_MAX_CALLS set before the stack starts (make capacity sets 500)")
    far = FarEnd(args.seconds)
    logs = {"ours": AST / "var/log/asterisk/messages.log", "farend": far.log}
    log_from = {k: p.stat().st_size if p.exists() else 0 for k, p in logs.items()}
    seed(store, cfg, max(ns), recording)
    install_overlay(max(ns))
    runs: list[list[Result]] = []
    try:
        far.start()
        set_globals(far, cfg, recording)
        for n in ns:
            for k in range(args.repeat):
                order = setups[k % len(setups):] + setups[:k % len(setups)]
                rs = [run_setup(s, n, args, far, store, cfg) for s in order]
                print_run(rs, recording, args.seconds)
                runs.append(rs)
        print_ceilings(runs, setups, recording)
        report_log_lines(logs, log_from)
    finally:
        far.stop()
        # render our configs again: the overlay is gone
        subprocess.run(["bash", str(ROOT / "docker" / "stack.sh"), "reload"], capture_output=True, timeout=120,
                       check=False)
    return 0


def report_log_lines(logs: dict[str, Path], log_from: dict[str, int]) -> None:
    for name, path in logs.items():
        try:
            with open(path, "rb") as fh:
                fh.seek(log_from[name])
                lines = [ln for ln in fh.read().decode(errors="replace").splitlines()
                         if "WARNING[" in ln or "ERROR[" in ln]
        except OSError:
            lines = []
        print(f"-- {name} Asterisk: {len(lines)} WARNING/ERROR lines during the run")
        for ln in lines[:10]:
            print(f"   {ln}")


if __name__ == "__main__":
    sys.exit(main())
