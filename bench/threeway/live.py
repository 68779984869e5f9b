"""The labelled three-way corpus through the real detection path, many calls at once.

    make threeway [CALLS=80 ATTEMPTS=300 BENIGN_MINUTES=1000 BENIGN_S=180]
    (.venv/bin/python -m bench.threeway.live --calls 80 --attempts 300 --benign-minutes 1000)

The capacity bench's far-end Asterisk (bench/capacity/) places inmate calls into ours; our call
flow dials the called number back to it; its called party accepts and then, instead of echoing,
plays a clip of the corpus (bench/threeway/corpus.py) as its line's audio ([clip]). Our listener
taps the called leg and its rules act at the bench facility's defaults. Per clip label it prints
the detection rate (the call disconnected, and by which rule), the latency from the signature's
onset in the clip to the listener acting, both on the wall clock (p50/p99), false actions per 1,000 benign call-minutes, and
CPU per live call of our Asterisk and of the listener (the detector runs in it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.capacity import capacity as cap
from ics import config
from ics.store import Store, connect
from tests.support import load_stack_env, services

from . import corpus

CLIPS = "/var/lib/asterisk-farend/threeway"   # inside the root; Playback() names


def make_clips(args, rng: random.Random) -> tuple[list[dict], list[dict]]:
    d = cap.AST / CLIPS.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    attempts, benign = [], []
    for i in range(args.attempts):
        kind = corpus.ATTEMPT_KINDS[i % len(corpus.ATTEMPT_KINDS)]
        x, onset, rule = corpus.attempt(kind, rng, "na")
        corpus.write(d / f"a{i:03d}.wav", np.concatenate([x, corpus.silence(3000)]))
        attempts.append({"clip": f"{CLIPS}/a{i:03d}", "kind": kind, "rule": rule, "onset_s": onset})
    for i in range(args.distinct_benign):
        kind = corpus.BENIGN_KINDS[i % len(corpus.BENIGN_KINDS)]
        # longer than the call: the clip never ends (into silence) while the call is up
        corpus.write(d / f"b{i:03d}.wav", corpus.benign(kind, rng, args.benign_s + 20))
        benign.append({"clip": f"{CLIPS}/b{i:03d}", "kind": kind, "rule": "", "onset_s": None})
    cap.in_root("chown", "-R", "asterisk:asterisk", CLIPS)
    return attempts, benign


def run_batch(jobs: list[dict], far, store, args, sampler=None) -> dict[str, float]:
    """Place the jobs' calls at once and wait them out; returns each process's CPU-s per
    bridged call-second over the batch (with a sampler)."""
    tap = far.tap
    cap.wait_idle(far, 120)
    mark = tap.mark()
    t_first = time.time()
    for i, job in enumerate(jobs):
        num = cap.number("ours", i)
        job["num"] = num
        tap.action("Setvar", Variable=f"CLIP_{num}", Value=job["clip"])
        tap.action("Originate", Channel=f"PJSIP/{num}@ours", Context="handset", Exten="s", Priority=1,
                   Variable=[f"NUM={num}", f"INMATE={cap.inmate_id(i)}", f"PIN={cap.PIN}"], Async="true",
                   Timeout=30000)
        time.sleep(1 / args.rate)
    deadline = time.time() + args.benign_s + 120
    while time.time() < deadline:
        legs = tap.events({"Event": "UserEvent", "UserEvent": "BenchLeg"}, since=mark)
        if sum(e["Side"] == "handset" for e in legs) >= len(jobs):
            break
        time.sleep(1)
    starts = {e["Num"]: float(e["Timestamp"]) for e in
              tap.events({"Event": "UserEvent", "UserEvent": "ClipStart"}, since=mark)}
    recs = cap.wait_records(store, {j["num"] for j in jobs}, t_first)
    for job in jobs:
        rec = recs.get(job["num"], {})
        job["clip_start"] = starts.get(job["num"])
        job["fired"] = json.loads(rec.get("fired") or "[]")
        job["reason"] = rec.get("reason", "")
        job["bridged_s"] = ((rec.get("ended_ms") or 0) - (rec.get("bridged_ms") or 0)) / 1000 \
            if rec.get("bridged_ms") else 0
    if sampler is None:
        return {}
    call_s = sum(j["bridged_s"] for j in jobs) or 1
    return {k: sampler.cpu_s(k, t_first, time.time()) / call_s for k in ("asterisk", "ami")}


def thread_split(pid: int, calls: int, out: dict, seconds: float = 20) -> None:
    """Asterisk's CPU by thread while the tap-on batch is up: the taps' own threads (Originate of
    an AudioSocket channel running ChanSpy: pbx_outgoing_exec, one per call) against all the
    others, from /proc per thread; one run, so the box's load moves both sides alike."""
    def kinds() -> dict[str, str]:
        return {f[1]: f[2] for f in (line.split() for line in cap.ours_cli("core show threads").splitlines())
                if len(f) > 3 and f[1].isdigit()}

    def snap() -> dict[str, int]:
        out = {}
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                f = Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[t] = int(f[11]) + int(f[12])
        return out

    deadline = time.time() + 120
    while time.time() < deadline and list(kinds().values()).count("pbx_outgoing_exec") < calls:
        time.sleep(2)
    time.sleep(3)
    a, kind = snap(), kinds()
    time.sleep(seconds)
    b = snap()
    used = {k: 0 for k in ("tap", "rest")}
    for t, v in b.items():
        used["tap" if kind.get(t) == "pbx_outgoing_exec" else "rest"] += v - a.get(t, v)
    out.update({k: v / cap.HZ / seconds / calls for k, v in used.items()})


def module_stats() -> dict[str, int]:
    """res_ics_tonewatch's counters (`ics tonewatch stats`): frames analysed and the CPU spent on
    them, on the called legs' own threads' clocks."""
    for line in cap.ours_cli("ics tonewatch stats").splitlines():   # (the CLI may print a notice first)
        words = line.split()
        if words[:1] == ["watches"]:
            return {k: int(v) for k, v in zip(words[::2], words[1::2])}
    raise SystemExit("res_ics_tonewatch is not loaded (ics tonewatch stats)")


def use_detector(detector: str, on: bool = True) -> None:
    cap.os.environ["ICS_AMI_TAP"] = "true" if on else "false"
    cap.os.environ["ICS_AMI_DETECTOR"] = detector
    services.kill("ami")
    services.restart("ami")
    time.sleep(2)


def tap_cost(jobs, far, store, args) -> tuple[dict, dict]:
    """The same benign batch with the detector off and on, --pairs times in the order off on, on off,
    off on, ... (a drift of the box between batches then cancels out): CPU per call of each, the
    batches of one setting averaged, and each pair's difference (pair_diffs)."""
    out = []
    order = [("false", "true") if k % 2 == 0 else ("true", "false") for k in range(args.pairs)]
    for tap_on in (t for pair in order for t in pair):
        use_detector(args.detector, tap_on == "true")
        sampler = cap.Sampler(cap.service_pids(far))
        taps_before = services._events("ami", "tap.started")
        sampler.start()
        split: dict[str, float] = {}
        if tap_on == "true" and args.detector == "tap":
            threading.Thread(target=thread_split, args=(cap.service_pids(far)["asterisk"], len(jobs), split),
                             daemon=True).start()
        stats = module_stats() if args.detector == "module" else {}
        batch = [dict(j) for j in jobs]
        out.append(run_batch(batch, far, store, args, sampler))
        out[-1]["threads"] = split
        if stats:   # the module's own CPU per bridged call-second, and its frames (50 per second: all seen)
            after, call_s = module_stats(), sum(j["bridged_s"] for j in batch) or 1
            out[-1]["module"] = {"cpu": (after["cpu_ns"] - stats["cpu_ns"]) / 1e9 / call_s,
                                 "fps": (after["frames"] - stats["frames"]) / call_s,
                                 "events": after["events"] - stats["events"]}
        sampler.halt.set()
        sampler.join()
        taps = services._events("ami", "tap.started") - taps_before
        print(f"  tap {'on' if tap_on == 'true' else 'off'}: {taps} of {len(jobs)} calls tapped", flush=True)
        if (tap_on == "true") != (taps >= len(jobs)):   # a cost figure for taps that never ran is no figure
            raise SystemExit(f"tap {tap_on}: {taps} of {len(jobs)} calls tapped")
        out[-1]["on"] = tap_on == "true"
        print(f"    Asterisk {out[-1]['asterisk'] * 100:.3f}, listener {out[-1]['ami'] * 100:.3f} % of a core per call",
              flush=True)
    offs, ons = [o for o in out if not o["on"]], [o for o in out if o["on"]]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)
    off = {k: mean(offs, k) for k in ("asterisk", "ami")}
    on = {k: mean(ons, k) for k in ("asterisk", "ami")}
    on["threads"] = ons[0]["threads"]
    if ons[0].get("module"):
        on["module"] = {k: mean([o["module"] for o in ons], k) for k in ("cpu", "fps", "events")}
    on["pair_diffs"] = [b["asterisk"] - a["asterisk"] if b["on"] else a["asterisk"] - b["asterisk"]
                        for a, b in zip(out[::2], out[1::2])]
    return off, on


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=80, help="calls at once")
    ap.add_argument("--attempts", type=int, default=300)
    ap.add_argument("--benign-minutes", type=int, default=1000)
    ap.add_argument("--benign-s", type=int, default=180, help="length of a benign call")
    ap.add_argument("--distinct-benign", type=int, default=20, help="benign clips synthesised (then reused)")
    ap.add_argument("--rate", type=float, default=8, help="calls placed per second")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--baseline", type=int, default=40, help="benign calls run with the tap off, then on (0: skip)")
    ap.add_argument("--pairs", type=int, default=1, help="off/on pairs of the baseline batch (ABBA order)")
    ap.add_argument("--detector", choices=config.DETECTORS, default="module",
                    help="module: res_ics_tonewatch in Asterisk; tap: ChanSpy into the listener's AudioSocket")
    args = ap.parse_args()
    load_stack_env()
    cfg = config.load()
    store = Store(connect(cfg), cfg)
    rng = random.Random(args.seed)
    attempts, benign = make_clips(args, rng)
    # about a minute of each call goes before the bridge or to the settling of the far end's legs
    n_benign = -(-args.benign_minutes * 60 // max(args.benign_s - 60, 30))
    # attempts first: their calls end at the disconnect, so their batches are short
    shuffle = random.Random(args.seed).shuffle
    a_jobs, b_jobs = [dict(a) for a in attempts], [dict(benign[i % len(benign)]) for i in range(n_benign)]
    shuffle(a_jobs)
    shuffle(b_jobs)
    jobs = a_jobs + b_jobs
    far = cap.FarEnd(args.benign_s)
    # recorded calls: the capacity bench leaves a call unrecorded by listing its number as privileged,
    # and a privileged (attorney's) call is never tapped, so an unrecorded batch measures no detector
    cap.seed(store, cfg, args.calls, recording=True)
    cap.install_overlay(args.calls)
    t0 = time.time()
    try:
        far.start()
        cap.set_globals(far, cfg, recording=True)
        use_detector(args.detector)
        cost = tap_cost([dict(benign[i % len(benign)]) for i in range(args.baseline)], far, store, args) \
            if args.baseline else None
        pids = cap.service_pids(far)
        sampler = cap.Sampler(pids)
        sampler.start()
        batches = [a_jobs[b:b + args.calls] for b in range(0, len(a_jobs), args.calls)] + \
                  [b_jobs[b:b + args.calls] for b in range(0, len(b_jobs), args.calls)]
        for n, batch in enumerate(batches):
            run_batch(batch, far, store, args)
            print(f"  batch {n + 1}/{len(batches)} ({len(batch)} calls) done at {time.time() - t0:.0f} s", flush=True)
        sampler.halt.set()
        sampler.join()
    finally:
        far.stop()
        cap.subprocess.run(["bash", str(cap.ROOT / "docker" / "stack.sh"), "reload"], capture_output=True,
                           timeout=120, check=False)
    report(jobs, sampler, t0, cost, args)
    return 0


def report(jobs, sampler, t0, cost, args) -> None:
    by, late, own = defaultdict(lambda: [0, 0]), defaultdict(list), defaultdict(int)
    false = defaultdict(int)
    benign_min = call_s = 0.0
    for j in jobs:
        call_s += j["bridged_s"]
        cuts = [f for f in j["fired"] if f["response"] == "disconnect"]
        if j["rule"]:
            by[j["kind"]][1] += 1
            if cuts:
                by[j["kind"]][0] += 1
                own[j["kind"]] += cuts[0]["rule"] == j["rule"]
                if j.get("clip_start"):
                    # the wall clock: when the listener acted, from when the far end began the clip
                    late[j["kind"]].append(cuts[0]["acted_ms"] - (j["clip_start"] + j["onset_s"]) * 1000)
        else:
            benign_min += j["bridged_s"] / 60
            for f in j["fired"]:
                false[(j["kind"], f["rule"], f["response"])] += 1
    print(f"detector: {args.detector}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{args.calls} calls at once; attempts {sum(v[1] for v in by.values())}, benign {benign_min:.0f} call-minutes "
          f"({sum(1 for j in jobs if not j['rule'])} calls), {time.time() - t0:.0f} s")
    print(f"{'signature':<12}{'caught':>10}{'own rule':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for k in sorted(by):
        v = late[k]
        p50 = np.percentile(v, 50) if v else float("nan")
        p99 = np.percentile(v, 99) if v else float("nan")
        print(f"{k:<12}{by[k][0]:>5}/{by[k][1]:<4}{own[k]:>10}{p50:>9.0f}{p99:>9.0f}")
    for resp in ("disconnect", "warn", "flag"):
        n = sum(v for (_, _, r), v in false.items() if r == resp)
        print(f"false {resp}: {n} ({n / max(benign_min, 1e-9) * 1000:.2f} per 1,000 benign call-minutes)")
    for key, v in sorted(false.items()):
        print(f"  {key}: x{v}")
    span = (sampler.samples[0][0], sampler.samples[-1][0])
    for name in ("asterisk", "ami", "farend"):
        cpu = sampler.cpu_s(name, *span)
        print(f"CPU {name}: {cpu:.1f} s, {cpu / max(call_s, 1) * 100:.3f}% of a core per live call")
    if cost:
        off, on = cost
        ast, lst = on["asterisk"] - off["asterisk"], on["ami"] - off["ami"]
        print(f"tap off/on, same benign batch ({args.pairs} pair(s), mean), % of a core per live call: Asterisk "
              f"{off['asterisk'] * 100:.3f} / {on['asterisk'] * 100:.3f}, listener {off['ami'] * 100:.3f} / "
              f"{on['ami'] * 100:.3f}; Asterisk on minus off by pair: "
              + ", ".join(f"{d * 100:+.3f}" for d in on["pair_diffs"]))
        print(f"detector cost (Asterisk + listener, on minus off): {(ast + lst) * 100:.3f}% of a core per live call, "
              f"{(ast + lst) / max(off['asterisk'], 1e-9) * 100:.0f}% of Asterisk's own per call "
              f"(Asterisk's share {ast * 100:.3f}, listener's {lst * 100:.3f})")
        if on.get("module"):
            m = on["module"]
            print(f"res_ics_tonewatch's own CPU (the called legs' threads' clocks): {m['cpu'] * 100:.4f}% of a core "
                  f"per call, {m['cpu'] / max(off['asterisk'], 1e-9) * 100:.1f}% of Asterisk's own per call; "
                  f"{m['fps']:.1f} frames/s per call analysed, {m['events']:.0f} ICSTone events a batch")
        if on.get("threads"):
            tap, rest = on["threads"]["tap"], on["threads"]["rest"]
            print(f"Asterisk by thread, tap on, 20 s: the taps' threads {tap * 100:.3f}% of a core per call, "
                  f"all other threads {rest * 100:.3f}%: the taps' threads alone are {tap / rest * 100:.0f}% of "
                  f"Asterisk's own per call (ChanSpy's audio hook on the called leg not counted)")


if __name__ == "__main__":
    raise SystemExit(main())
