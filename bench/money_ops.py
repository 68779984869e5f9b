"""Atomic money operations per second against one local Redis: the money path of one call.

One operation is what a two-minute accepted call costs the money path: the
reserve Lua script (hold the first minute before ringing), the extend script
(the listener holds the second minute before it starts) and the settle script
(release the hold, charge, append the ledger entry), each in the account's slot and
each followed by its second step (the copy to the call record: read, write, mark
done), through ics.store: 14 round trips. Workers (processes by default, each with its own connection) run
them in a loop for --seconds against one shared prepaid account; the figures
are calls/s over all workers and the p50/p99 latency of one call's three
scripts. At the end the ledger check proves the account still balances.

Uses ICS_REDIS_URL if set; otherwise starts its own redis-server on a free
loopback port with the stack's durability (appendonly yes, appendfsync
everysec) in a temporary directory, and stops it.

    .venv/bin/python bench/money_ops.py [--workers 1,8,32] [--seconds 3] [--mode processes|threads]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from ics import config, keys, ledger  # noqa: E402
from ics.store import Store, connect  # noqa: E402

ACCOUNT = "bench-money"
RATE = 7


def make_store(url: str) -> Store:
    cfg = config.load(environ={"ICS_REDIS_URL": url})
    return Store(connect(cfg), cfg)


def work(url: str, wid: str, seconds: float, start_at: float, out) -> None:
    try:
        out.put(_work(url, wid, seconds, start_at))
    except Exception as exc:  # reported by the parent, which must not wait forever
        out.put(exc)


def _work(url: str, wid: str, seconds: float, start_at: float) -> list[int]:
    store = make_store(url)
    lat: list[int] = []
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        cid = f"bench-{wid}-{n}"
        t = time.perf_counter_ns()
        if not store.reserve(ACCOUNT, cid, RATE, minutes=1) or store.extend_hold(ACCOUNT, cid, RATE, 1) != "held":
            raise RuntimeError("bench account ran dry")
        store.settle(cid, ACCOUNT, RATE * (1 + n % 2), 1 + n % 2, RATE)
        lat.append(time.perf_counter_ns() - t)
        n += 1
    store.r.close()
    return lat


def run_level(url: str, workers: int, seconds: float, mode: str) -> tuple[float, list[int]]:
    start_at = time.time() + 0.5  # every worker connected before the clock starts
    if mode == "processes":
        q = mp.get_context("fork").Queue()
        procs = [mp.get_context("fork").Process(target=work, args=(url, f"{workers}.{i}", seconds, start_at, q))
                 for i in range(workers)]
    else:
        import queue
        q = queue.Queue()
        procs = [threading.Thread(target=work, args=(url, f"{workers}.{i}", seconds, start_at, q)) for i in range(workers)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    for res in results:
        if isinstance(res, Exception):
            raise SystemExit(f"a worker failed: {res}")
    lats = [x for res in results for x in res]
    return len(lats) / seconds, lats


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install redis-server) and ICS_REDIS_URL not set")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                             "--daemonize", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            client.close()
            return proc, url
        except redis.exceptions.ConnectionError:
            time.sleep(0.025)
    proc.kill()
    raise SystemExit("redis-server did not start")


def cleanup(r: redis.Redis) -> None:
    batch = []
    for k in [*r.scan_iter(match=keys.call("bench-*"), count=1000),
              *r.scan_iter(match=keys.call_money(ACCOUNT, "*"), count=1000)]:
        batch.append(k)
        if len(batch) >= 1000:
            r.delete(*batch)
            batch.clear()
    if batch:
        r.delete(*batch)
    r.delete(keys.account(ACCOUNT), keys.ledger(ACCOUNT), keys.account_numbers(ACCOUNT),
             keys.account_holds(ACCOUNT), keys.account_unsynced(ACCOUNT))
    r.srem(keys.ACCOUNTS, ACCOUNT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured time per level")
    ap.add_argument("--mode", choices=("processes", "threads"), default="processes")
    a = ap.parse_args()
    levels = [int(x) for x in a.workers.split(",")]

    url = os.environ.get("ICS_REDIS_URL")
    proc = tmp = None
    if not url:
        tmp = tempfile.mkdtemp(prefix="ics-bench-redis-")
        proc, url = start_redis(tmp)
    try:
        store = make_store(url)
        if store.account(ACCOUNT) is None:
            store.create_account(ACCOUNT, "bench", [])
        store.adjust(ACCOUNT, "deposit", 90_000_000_00, "bench float")
        info = store.r.info()
        print(f"redis {info['redis_version']} at {url.split('@')[-1]}, appendonly={info['aof_enabled']} "
              f"({'own server, appendfsync everysec' if proc else 'ICS_REDIS_URL'}); {os.cpu_count()} CPUs; "
              f"{a.mode}, {a.seconds:g} s per level")
        print("one op = reserve + next-minute hold + settle (Lua, ledger XADD), each with its copy to the "
              "call record: 14 round trips")
        print(f"{'workers':>8} {'ops/s':>10} {'scripts/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'ops':>8}")
        for w in levels:
            rate, lats = run_level(url, w, a.seconds, a.mode)
            lats.sort()
            print(f"{w:>8} {rate:>10,.0f} {3 * rate:>10,.0f} {pct(lats, .50):>8.3f} {pct(lats, .99):>8.3f} "
                  f"{len(lats):>8}")
        doc = ledger.check_account(store.r, ACCOUNT)
        acct = store.account(ACCOUNT)
        print(f"ledger check of {ACCOUNT}: {'ok' if not doc['problems'] else doc['problems']} "
              f"({doc['entries']} entries, held {acct.held_cents})")
        if proc is None:  # someone else's Redis: leave nothing of ours behind
            cleanup(store.r)
        return 0 if not doc["problems"] and acct.held_cents == 0 else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
