"""Per call, what the whole flow asks of Redis and of AMI (README, Sizing a state deployment): a
handful of real calls (pjsua2 phones: dial, inmate id and PIN, the called party accepts, HOLD s of
talk, the inmate hangs up, settled and billed) on the running stack, and for each:

- Redis commands by type: INFO commandstats deltas on every master, as the admin user (the bench's
  own INFO left out; the idle rate measured first, e.g. the listener's heartbeat, taken off);
- round trips: INFO stats total_reads_processed deltas (one read per request or pipeline received);
- AMI events by name as the listener receives them: the lab's AMI user sees every event and the
  bench keeps those the listener registers for (ami.listener CALL_EVENTS); the listener's own
  ics_ami_events_total (its /metrics) beside it.

Works on a single Redis and on the Redis Cluster (ICS_REDIS_CLUSTER=1 make up).

    ip netns exec NAME make up        # (or ICS_REDIS_CLUSTER=1 make up)
    .venv/bin/python bench/per_call.py [--calls 5] [--hold 3]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis.cluster import RedisCluster  # noqa: E402

from ami.listener import CALL_EVENTS  # noqa: E402
from ics import config  # noqa: E402
from tests.support import admin_redis, load_stack_env  # noqa: E402
from tests.support.callflow import NUMBER, login, make_world, press_when, wait_settled  # noqa: E402

OWN = {"info"}  # the bench's own commands


def info(r, section: str) -> list[dict]:
    if isinstance(r, RedisCluster):
        return list(r.info(section, target_nodes=RedisCluster.PRIMARIES).values())
    return [r.info(section)]


def snapshot(r) -> tuple[collections.Counter, int]:
    cmds: collections.Counter = collections.Counter()
    for node in info(r, "commandstats"):
        for k, v in node.items():
            name = k.removeprefix("cmdstat_")
            if name not in OWN:
                cmds[name] += v["calls"]
    reads = sum(node["total_reads_processed"] for node in info(r, "stats"))
    return cmds, reads


def listener_events() -> float:
    port = config.DEFAULTS["ami"]["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ics_ami_events_total "))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--hold", type=float, default=3.0, help="seconds of talk per call")
    args = ap.parse_args()
    load_stack_env()
    from tests.support.ami_tap import AmiTap
    from tests.support.phones import Harness

    admin = admin_redis()
    cluster = isinstance(admin, RedisCluster)
    world = make_world(balance_cents=100 * (args.calls + 1))
    harness, tap = Harness(), AmiTap.from_env()
    try:
        inmate, family = harness.phone("inmate1"), harness.phone(NUMBER)
        for p in (inmate, family):
            p.register(10)
        # the idle rate (heartbeats, sweeps): taken off each call's window
        c0, r0, t0 = *snapshot(admin), time.monotonic()
        time.sleep(5)
        c1, r1, t1 = *snapshot(admin), time.monotonic()
        idle = {k: (c1[k] - c0[k]) / (t1 - t0) for k in c1}
        idle_reads = (r1 - r0) / (t1 - t0)
        per_cmd: collections.Counter = collections.Counter()
        per_event: collections.Counter = collections.Counter()
        reads = listened = 0.0
        for i in range(args.calls + 1):  # the first warms up (script loads, connections): not counted
            family.drain_incoming()
            before, reads0, ev0, t0 = *snapshot(admin), listener_events(), time.monotonic()
            mark = tap.mark()
            call = inmate.call(NUMBER)
            login(tap, call, mark)
            callee = family.wait_incoming(15)
            callee.answer()
            press_when(tap, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{NUMBER}")
            tap.wait_for({"Event": "BridgeEnter", "Channel": lambda c: c.startswith(f"PJSIP/{NUMBER}")}, 15, since=mark)
            time.sleep(args.hold)
            call.hangup()
            callee.wait_disconnected(20)
            time.sleep(2)  # settlement, the listener's last events
            after, reads1, ev1, t1 = *snapshot(admin), listener_events(), time.monotonic()
            rec = wait_settled(world, 15)
            assert int(rec["billed_cents"]) > 0, rec
            if i == 0:
                continue
            for k in after:
                per_cmd[k] += after[k] - before[k] - idle.get(k, 0) * (t1 - t0)
            reads += reads1 - reads0 - idle_reads * (t1 - t0)
            listened += ev1 - ev0
            per_event.update(e.get("Event", "") for e in tap.since(mark) if e.get("Event") in CALL_EVENTS)
        n = args.calls
        topology = "Redis Cluster (3 masters)" if cluster else "single Redis"
        print(f"{n} calls on the {topology}: accepted, {args.hold:g} s of talk, settled and billed; per call:")
        print(f"  Redis commands {sum(v for v in per_cmd.values()) / n:6.1f}   round trips (reads) {reads / n:6.1f}"
              f"   (idle: {sum(idle.values()):.1f} commands/s, {idle_reads:.1f} reads/s)")
        for k, v in sorted(per_cmd.items(), key=lambda kv: -kv[1]):
            if round(v / n, 1) > 0:
                print(f"    {k:22s} {v / n:6.1f}")
        print(f"  AMI events the listener handled {listened / n:6.1f} (ics_ami_events_total); by name (lab tap):")
        for k, v in per_event.most_common():
            print(f"    {k:22s} {v / n:6.1f}")
    finally:
        harness.shutdown()
        tap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
