"""Farm: inmate calls through Kamailio to one call node, then to two. Prints figures.

    .venv/bin/python bench/farm/farm.py [--calls 300] [--rate 20] [--hold 5] [--setups 1,2]
    (make farm; kept out of make bench, which runs bench/*.py, and make test)

SIPp (Debian's sip-tester) plays the inmate handsets (bench/farm/inmate-call.xml): each call
is an INVITE to Kamailio, its 407, the INVITE again with the handset's credentials, the call
node's 200 (the inmate flow answers and prompts for the inmate id), --hold seconds of that
prompt, then BYE. For each setup (1: node a alone behind Kamailio; 2: nodes a and b) the
cluster is brought up with those nodes (docker/stack.sh up-cluster, ICS_CLUSTER_NODES),
--calls calls are placed at --rate a second, and it prints:

  carried      calls that got their 200 and ended cleanly, of those placed, and per node
               (from the call records' node)
  setup rate   calls answered per second over the run
  PDD p50/p99  first INVITE to 200 OK, as the handset sees it (Kamailio's 407 round trip,
               the node's answer and the FastAGI flow's start included)
  CPU per call Kamailio's processes, and the call nodes' (Asterisk, ics-fastagi, ics-ami),
               utime+stime from /proc over the run, in CPU-ms per call (setup and --hold
               seconds of prompt; the idle rate measured before is taken off)

On this 2-core machine both nodes share the same cores: the point is correctness and the
front's overhead, not speed-up. The cluster is stopped at the end (down-cluster).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from ics import config, keys  # noqa: E402
from ics.store import Store, StoreError, connect  # noqa: E402
from tests.support import load_stack_env, read_stack_env, stack_dir  # noqa: E402
from tests.support.cluster import KAMAILIO  # noqa: E402

STACK_SH = ROOT / "docker" / "stack.sh"
SCENARIO = HERE / "inmate-call.xml"
NODES = {"a": "127.0.0.2", "b": "127.0.0.3"}
HZ = os.sysconf("SC_CLK_TCK")
NUMBER = "3125550100"


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1)]


def group_ticks(pid: int) -> int:
    """utime+stime of every process in pid's process group (each service is started by setsid)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pid:  # pgrp
            total += int(fields[11]) + int(fields[12])
    return total


def pids(names) -> list[int]:
    return [int((stack_dir() / "run" / f"{n}.pid").read_text()) for n in names]


def ticks(names) -> int:
    return sum(group_ticks(p) for p in pids(names))


def stack(cmd: str, nodes: str | None = None) -> None:
    env = dict(os.environ)
    if nodes is not None:
        env["ICS_CLUSTER_NODES"] = nodes
    subprocess.run(["bash", str(STACK_SH), cmd], check=True, env=env, capture_output=True, timeout=300)


def seed() -> None:
    """The inmate handsets' facility (dialplan/pjsip.conf.in: ICS_FACILITY=main), if missing."""
    load_stack_env()
    cfg = config.load()
    store = Store(connect(cfg), cfg)
    if store.facility("main") is None:
        try:
            store.create_facility("main", "Demo County Jail")
        except StoreError:
            pass


def calls_by_node(since_ms: int) -> dict[str, int]:
    cfg = config.load()
    r = Store(connect(cfg), cfg).r
    out: dict[str, int] = {}
    for cid in r.zrangebyscore(keys.CALLS, since_ms, "+inf"):
        node = r.hget(keys.call(cid), "node") or "?"
        out[node] = out.get(node, 0) + 1
    return out


def run(setup: int, calls: int, rate: float, hold_s: float) -> dict:
    nodes = list(NODES)[:setup]
    stack("down-cluster")
    stack("up-cluster", " ".join(f"{n}:{NODES[n]}" for n in nodes))
    time.sleep(3)  # the listeners beat, Kamailio's first pings answered
    kam = ["kamailio"]
    node_procs = [f"{svc}-{n}" for n in nodes for svc in ("asterisk", "fastagi", "ami")]
    idle0, t_idle = (ticks(kam), ticks(node_procs)), time.monotonic()
    time.sleep(2)
    idle_s = time.monotonic() - t_idle
    idle_rate = ((ticks(kam) - idle0[0]) / idle_s, (ticks(node_procs) - idle0[1]) / idle_s)
    password = read_stack_env()["ICS_SIP_PASSWORD"]
    with tempfile.TemporaryDirectory() as tmp:
        before = (ticks(kam), ticks(node_procs))
        t0, since_ms = time.monotonic(), int(time.time() * 1000)
        out = subprocess.run(
            ["sipp", KAMAILIO, "-sf", str(SCENARIO), "-s", NUMBER, "-au", "inmate1", "-ap", password,
             "-i", "127.0.0.1", "-p", "5099", "-mi", "127.0.0.1", "-m", str(calls), "-r", str(rate),
             "-l", str(calls), "-d", str(int(hold_s * 1000)), "-trace_rtt", "-rtt_freq", "1",
             "-trace_stat", "-fd", "1", "-nostdin", "-timeout", str(int(calls / rate + hold_s + 60))],
            cwd=tmp, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        after = (ticks(kam), ticks(node_procs))
        rtt = [float(row["response_time_ms"]) for f in Path(tmp).glob("*_rtt.csv")
               for row in csv.DictReader(f.open(), delimiter=";")]
        stats = list(csv.DictReader(next(Path(tmp).glob("*_.csv")).open(), delimiter=";"))[-1]
    ok, failed = int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])
    cpu = [((after[i] - before[i]) / HZ - idle_rate[i] / HZ * elapsed) for i in (0, 1)]
    return {"setup": f"{setup} node{'s' if setup > 1 else ''}", "placed": ok + failed, "carried": ok,
            "by_node": calls_by_node(since_ms), "rate": len(rtt) / max(elapsed - hold_s, 1e-9),
            "pdd50": pct(rtt, 50), "pdd99": pct(rtt, 99), "kam_ms": 1000 * cpu[0] / max(ok, 1),
            "nodes_ms": 1000 * cpu[1] / max(ok, 1), "sipp_rc": out.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--hold", type=float, default=5.0, help="seconds each call stays up")
    ap.add_argument("--setups", default="1,2", help="node counts to run, e.g. 1,2")
    a = ap.parse_args()
    setups = [int(x) for x in a.setups.split(",")]
    if any(s not in (1, 2) for s in setups) or a.calls <= 0 or a.rate <= 0 or a.hold < 0:
        ap.error("--setups takes 1 and/or 2; --calls, --rate positive; --hold not negative")
    seed()
    rows = []
    try:
        for s in setups:
            rows.append(run(s, a.calls, a.rate, a.hold))
    finally:
        stack("down-cluster")
    print(f"farm: {a.calls} calls at {a.rate:g}/s through Kamailio ({KAMAILIO}), each held {a.hold:g} s")
    print(f"{'setup':<8} {'carried':>11} {'per node':<16} {'setup/s':>7} {'PDD p50':>8} {'PDD p99':>8} "
          f"{'Kamailio CPU-ms/call':>21} {'nodes CPU-ms/call':>18}")
    for r in rows:
        per = ", ".join(f"{n}={c}" for n, c in sorted(r["by_node"].items()))
        print(f"{r['setup']:<8} {r['carried']:>5}/{r['placed']:<5} {per:<16} {r['rate']:>7.1f} "
              f"{r['pdd50']:>6.0f}ms {r['pdd99']:>6.0f}ms {r['kam_ms']:>21.2f} {r['nodes_ms']:>18.1f}")
    return 0 if all(r["carried"] == r["placed"] == a.calls for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
