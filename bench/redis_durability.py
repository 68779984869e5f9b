"""What each Redis durability setting costs one money operation (README, Redis Cluster).

Starts its own Redis for each setting, on loopback in a temporary directory (the lab's
docker/redis-cluster.sh for the 3-master, 3-replica cluster), and times, from one client,
one after the other:

  deposit   icsctl account fund: one Lua script (adjust: balance + ledger XADD)
  call      a call's money path: reserve + next-minute hold + settle, each a script in the
            account's slot followed by its copy to the call record (14 round trips)

Settings: a single Redis and the cluster, each with appendfsync everysec and always, and on
the cluster with and without redis.wait_replicas = 1 (WAIT for one replica after each money
script). Prints the p50 / p99 latency in ms and operations per second.

    .venv/bin/python bench/redis_durability.py [--n 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ics import config, ledger  # noqa: E402
from ics.store import Store, connect  # noqa: E402

CLUSTER_SH = ROOT / "docker" / "redis-cluster.sh"
SINGLE_PORT, CLUSTER_PORT = 7400, 7410
RATE = 7


def single(workdir: str, fsync: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(["redis-server", "--port", str(SINGLE_PORT), "--bind", "127.0.0.1", "--dir", workdir,
                             "--appendonly", "yes", "--appendfsync", fsync, "--save", "", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{SINGLE_PORT}/0"


def cluster(workdir: str, fsync: str) -> str:
    subprocess.run(["bash", str(CLUSTER_SH), "start", workdir, str(CLUSTER_PORT)], check=True,
                   env=dict(os.environ, ICS_REDIS_APPENDONLY="yes", ICS_REDIS_APPENDFSYNC=fsync))
    return ",".join(f"redis://127.0.0.1:{CLUSTER_PORT + i}" for i in range(6))


def measure(url: str, wait: int, n: int) -> dict[str, list[float]]:
    cfg = config.load(environ={"ICS_REDIS_URL": url, "ICS_REDIS_WAIT_REPLICAS": str(wait)})
    store = Store(connect(cfg), cfg)
    store.create_account("bench", "bench", [])
    store.adjust("bench", "deposit", 1_000_000, "float")
    out: dict[str, list[float]] = {"deposit": [], "call": []}
    for i in range(n):
        t = time.perf_counter()
        store.adjust("bench", "deposit", 1, "bench")
        out["deposit"].append(time.perf_counter() - t)
        cid = f"bench-{i}"
        t = time.perf_counter()
        assert store.reserve("bench", cid, RATE, minutes=1) and store.extend_hold("bench", cid, RATE, 1) == "held"
        store.settle(cid, "bench", 2 * RATE, 2, RATE)
        out["call"].append(time.perf_counter() - t)
    assert ledger.check(store.r)["ok"]
    store.r.close()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="operations of each kind per setting")
    a = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; {a.n} deposits and {a.n} calls per setting, one client, loopback; "
          f"AOF on {tempfile.gettempdir()}")
    print(f"{'setting':<44} {'deposit p50':>11} {'p99':>7} {'/s':>6}   {'call p50':>8} {'p99':>7} {'/s':>5}")
    rows = [("single", "everysec", 0), ("single", "always", 0), ("cluster", "everysec", 0),
            ("cluster", "everysec", 1), ("cluster", "always", 0), ("cluster", "always", 1)]
    for kind, fsync, wait in rows:
        with tempfile.TemporaryDirectory(prefix="ics-durability-") as tmp:
            proc = None
            if kind == "single":
                proc, url = single(tmp, fsync)
            else:
                url = cluster(tmp, fsync)
            try:
                res = measure(url, wait, a.n)
            finally:
                if proc:
                    proc.terminate()
                    proc.wait(10)
                else:
                    subprocess.run(["bash", str(CLUSTER_SH), "stop", tmp], check=True)
        label = f"{kind}, appendfsync {fsync}" + (", WAIT 1 replica" if wait else "")
        d, c = res["deposit"], res["call"]
        print(f"{label:<44} {pct(d, .5):>11.2f} {pct(d, .99):>7.2f} {len(d) / sum(d):>6.0f}   "
              f"{pct(c, .5):>8.2f} {pct(c, .99):>7.2f} {len(c) / sum(c):>5.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
