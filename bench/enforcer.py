"""AMI enforcer under load, on the real Asterisk of the stack. Prints figures.

    .venv/bin/python bench/enforcer.py [--live 150] [--burst 150] [--probes 40]

1. Enforcement latency: from the AMI event reaching the listener to the
   Redirect (the hang-up with its prompt) being sent, p50 / p99, over `probes`
   synthetic inmate calls that break the extra-digits rule, while the listener
   also consumes the events of `live` calls held up on Asterisk (Local
   channels, TALK_DETECT on both legs, audio playing) and, for the second
   half of the probes, of a set-up burst of `burst` calls at once.
2. Backlog: how far the listener's receipt lags Asterisk's event timestamp.
3. Events per second the listener's dispatch handles on one core, from a
   replay of the captured stream (no network).
4. CPU per live call: Asterisk, the FastAGI server, the listener and Redis,
   idle against `live` calls, from /proc.

The listener measured is an in-process instance on the listener's own AMI
user (eventfilter and all); the stack's ics-ami is stopped meanwhile so the
two do not both act, and started again at the end. The synthetic calls'
dialplan is added over AMI (DialplanExtensionAdd) and removed afterwards:
nothing of it is in dialplan/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panoramisk.message import Message  # noqa: E402

from ami.connection import GuardedManager  # noqa: E402
from ami.listener import Listener  # noqa: E402
from ics import config, logs, records  # noqa: E402
from ics.store import Store, connect  # noqa: E402
from tests.support import read_stack_env, stack_dir, stack_setting  # noqa: E402

STACK = Path(os.environ.get("ICS_STACK_DIR", ROOT / ".stack"))
FACILITY = "bench"
# synthetic calls: A;1 (the "inmate" channel, carries ICS_CALL_ID) dials B; B;2 plays
# speech to A (talk detection has something to detect) or, for probes, sends 4 digits
EXTENSIONS = [
    ("ics-bench-a", "s", 1, "Answer", ""),
    ("ics-bench-a", "s", 2, "Set", "TALK_DETECT(set)="),
    ("ics-bench-a", "s", 3, "Playback", "ics/prompts/announce-recorded&ics/prompts/announce-recorded"),
    ("ics-bench-a", "s", 4, "Wait", "600"),
    ("ics-bench-b", "talk", 1, "Answer", ""),
    ("ics-bench-b", "talk", 2, "Set", "TALK_DETECT(set)="),
    ("ics-bench-b", "talk", 3, "Playback", "ics/prompts/announce-recorded&ics/prompts/menu-accept"),
    ("ics-bench-b", "talk", 4, "Wait", "600"),
    ("ics-bench-b", "digits", 1, "Answer", ""),
    ("ics-bench-b", "digits", 2, "Wait", "1.5"),
    ("ics-bench-b", "digits", 3, "SendDTMF", "1234,120"),
    ("ics-bench-b", "digits", 4, "Wait", "30"),
]


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def pidfile(name: str) -> int | None:
    try:
        return int((STACK / "run" / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def service_pids() -> dict[str, int]:
    out = {}
    for name in ("asterisk", "fastagi", "redis"):
        pid = pidfile(name)
        if pid:
            out[name] = pid
    out["listener (this process)"] = os.getpid()
    return out


async def cpu_per_call(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """% of one core used by each process over `seconds`."""
    hz = os.sysconf("SC_CLK_TCK")
    before = {k: cpu_ticks(p) for k, p in pids.items()}
    await asyncio.sleep(seconds)
    return {k: (cpu_ticks(p) - before[k]) / hz / seconds * 100 for k, p in pids.items()}


class Bench:
    def __init__(self, cfg, store: Store, args):
        self.cfg, self.store, self.args = cfg, store, args
        loop = asyncio.get_running_loop()
        a = cfg["ami"]
        # the load is driven as the lab's AMI user (CLI commands); the listener logs in as its own
        # user with its own secret (docker/stack.sh: .stack/ami.env)
        self.ctl = GuardedManager(host=a["host"], port=a["port"],
                                  username=stack_setting("ICS_STACK_AMI_LAB_USER") or a["user"],
                                  secret=stack_setting("ICS_STACK_AMI_LAB_SECRET") or a["secret"],
                                  loop=loop, reconnect_timeout=1)
        listener_secret = read_stack_env(stack_dir() / "ami.env").get("ICS_AMI_SECRET") or a["secret"]
        self.mgr = GuardedManager(host=a["host"], port=a["port"], username=a["listener_user"],
                                  secret=listener_secret, loop=loop, reconnect_timeout=1)
        self.listener = Listener(cfg, store, self.mgr)
        self.lag_ms: list[float] = []
        self.capture: list[dict] = []
        inner = self.listener.on_event

        def on_event(manager, event):  # the listener's own dispatch, timed and captured
            self.capture.append(dict(event))
            ts = event.get("Timestamp")
            if ts:
                self.lag_ms.append((time.time() - float(ts)) * 1000)
            inner(manager, event)

        for name in list(self.mgr.callbacks):
            self.mgr.callbacks[name] = [on_event if cb == inner else cb for cb in self.mgr.callbacks[name]]

    async def action(self, **kw):
        reply = await self.ctl.send_action(kw)
        first = reply[0] if isinstance(reply, list) else reply
        if str(first.get("Response", "")).lower() != "success":
            raise RuntimeError(f"{kw.get('Action')}: {first.get('Message')}")
        return reply

    async def setup_dialplan(self, add: bool):
        for ctx, exten, prio, app, data in EXTENSIONS:
            if add:
                await self.action(Action="DialplanExtensionAdd", Context=ctx, Extension=exten,
                                  Priority=prio, Application=app, ApplicationData=data, Replace="yes")
            else:
                try:
                    await self.action(Action="DialplanExtensionRemove", Context=ctx, Extension=exten,
                                      Priority=prio)
                except RuntimeError:
                    pass

    async def originate(self, kind: str, call_id: str = ""):
        kw = dict(Action="Originate", Channel="Local/s@ics-bench-a/n", Application="Dial",
                  Data=f"Local/{kind}@ics-bench-b/n,10", Timeout=15000, Async="true")
        if call_id:
            kw["Variable"] = f"ICS_CALL_ID={call_id}"
        await self.action(**kw)

    async def probe(self, n: int) -> None:
        call_id = f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{n:08x}"
        await asyncio.to_thread(records.create, self.store.r, call_id, facility=FACILITY, number="3125550100",
                                bridged_ms=int(time.time() * 1000), limit_s=900)
        await self.originate("digits", call_id)

    async def wait_cuts(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.listener.latencies_ms) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def live_channels(self) -> int:
        reply = await self.action(Action="CoreShowChannels")
        return sum(1 for m in reply if m.get("Event") == "CoreShowChannel") if isinstance(reply, list) else 0

    async def run(self) -> None:
        args = self.args
        self.ctl.connect()
        self.mgr.connect()
        await asyncio.wait_for(asyncio.gather(self.ctl.connected_event.wait(), self.mgr.connected_event.wait()), 10)
        ticker = asyncio.get_running_loop().create_task(self.listener.ticker())
        await self.setup_dialplan(True)
        pids = service_pids()
        idle = await cpu_per_call(pids, args.sample_s)

        print(f"== {args.live} live calls (Local channels, TALK_DETECT on both legs, audio playing)")
        for _ in range(args.live):
            await self.originate("talk")
        await asyncio.sleep(4)
        chans = await self.live_channels()
        print(f"   Asterisk shows {chans} channels")
        loaded = await cpu_per_call(pids, args.sample_s)
        events_before = len(self.capture)

        half = args.probes // 2
        print(f"== {half} probes (4 digits each, rule digits_max=3) while the live calls run")
        for i in range(half):
            await self.probe(i)
            await asyncio.sleep(0.3)
        await self.wait_cuts(half, 30)
        steady = list(self.listener.latencies_ms)

        print(f"== burst of {args.burst} call set-ups at once, with {args.probes - half} probes in it")
        lag_from = len(self.lag_ms)
        t0 = time.monotonic()
        jobs = [self.originate("talk") for _ in range(args.burst)]
        jobs += [self.probe(half + i) for i in range(args.probes - half)]
        await asyncio.gather(*jobs)
        burst_send_s = time.monotonic() - t0
        await self.wait_cuts(args.probes, 60)
        burst = list(self.listener.latencies_ms)[len(steady):]
        burst_lag = self.lag_ms[lag_from:]
        events = len(self.capture) - events_before

        ticker.cancel()
        await self.action(Action="Command", Command="channel request hangup all")
        await asyncio.sleep(2)
        await self.setup_dialplan(False)
        self.ctl.close()
        self.mgr.close()

        print("\n-- enforcement latency (AMI event received -> Redirect sent), ms")
        for label, values in (("steady", steady), ("in the burst", burst)):
            print(f"   {label:13s} n={len(values):3d}  p50 {pct(values, 50):.3f}  p99 {pct(values, 99):.3f}"
                  f"  max {max(values, default=float('nan')):.3f}")
        print("-- backlog (listener receipt - Asterisk event timestamp), ms")
        print(f"   whole run     n={len(self.lag_ms)}  p50 {pct(self.lag_ms, 50):.1f}  p99 {pct(self.lag_ms, 99):.1f}"
              f"  max {max(self.lag_ms, default=float('nan')):.1f}")
        print(f"   in the burst  n={len(burst_lag)}  p50 {pct(burst_lag, 50):.1f}  p99 {pct(burst_lag, 99):.1f}"
              f"  max {max(burst_lag, default=float('nan')):.1f}")
        print(f"   originates sent in {burst_send_s:.2f} s; {events} events reached the listener from the "
              f"probes on (its AMI user's eventfilter drops the rest)")
        print(f"-- CPU, % of one core (idle -> {args.live} live calls), per live call")
        for k in pids:
            per = (loaded[k] - idle[k]) / max(1, args.live)
            print(f"   {k:24s} {idle[k]:6.1f} -> {loaded[k]:6.1f}   {per:.3f} per call")
        await self.replay()

    async def replay(self):
        """Events/s of the listener's dispatch alone, replaying the captured stream."""
        msgs = [Message(ev) for ev in self.capture]
        if not msgs:
            print("-- replay: nothing captured")
            return
        mgr = GuardedManager(host="127.0.0.1", port=1, username="x", secret="x",
                             loop=asyncio.get_running_loop())  # never connected
        lst = Listener(self.cfg, self.store, mgr)
        lst.spawn = lambda coro: coro.close()  # decisions only: no actions, no Redis
        t0 = time.process_time()
        rounds = 0
        while time.process_time() - t0 < 2.0:
            for m in msgs:
                lst.on_event(mgr, m)
            lst.calls.clear()
            lst.bridges.clear()
            rounds += 1
        rate = rounds * len(msgs) / (time.process_time() - t0)
        print(f"-- replay of {len(msgs)} captured events through the listener's dispatch: "
              f"{rate:,.0f} events/s of CPU on one core")


async def run(cfg, store, args) -> None:
    await Bench(cfg, store, args).run()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--live", type=int, default=150)
    ap.add_argument("--burst", type=int, default=150)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--sample-s", type=float, default=10.0)
    args = ap.parse_args()
    cfg = config.load()
    logs.setup("json", "error")  # the figures, not the listener's log lines
    store = Store(connect(cfg), cfg)
    if FACILITY not in store.facilities():
        store.create_facility(FACILITY, "Bench", rule_silence=False, rule_hold=False)
    ami_pid = pidfile("ami")
    if ami_pid:  # one enforcer at a time
        try:
            os.killpg(ami_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        time.sleep(1)
    try:
        asyncio.run(run(cfg, store, args))
    finally:
        subprocess.run(["bash", str(ROOT / "docker" / "stack.sh"), "up"], capture_output=True, timeout=300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
