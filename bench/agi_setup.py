"""Python-side call-setup cost: process AGI against FastAGI, for the same inmate flow.

A scripted Asterisk (this script) plays the channel side of the AGI protocol
and answers instantly, so what is timed is ours: process start and imports
(process AGI), the protocol, the Redis checks, the hold of funds, up to the
point the flow tells the dialplan to dial. Redis is real (the stack's, or
ICS_REDIS_URL). Runs N calls of each, sequentially, then with K calls held
open on other FastAGI sessions ("live calls").

    .venv/bin/python bench/agi_setup.py [--runs 200] [--live 100]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ics import config, prompts  # noqa: E402
from ics.store import Store, connect  # noqa: E402
from tests.support import admin_redis  # noqa: E402

INMATE, PIN, NUMBER = "123456", "4321", "3125550100"


def env_block(route: str, args: list[str]) -> bytes:
    lines = ["agi_network: yes", f"agi_network_script: {route}", "agi_channel: PJSIP/inmate1-00000001",
             "agi_uniqueid: 1.1", "agi_callerid: 100", "agi_calleridname: Handset 1",
             f"agi_extension: {NUMBER}", "agi_context: ics-inmate"]
    lines += [f"agi_arg_{i}: {a}" for i, a in enumerate(args, 1)]
    return ("\n".join(lines) + "\n\n").encode()


def reply(command: str) -> bytes:
    if command.startswith("GET VARIABLE"):
        return b"200 result=1 (main)\n"
    if command.startswith("GET DATA"):
        return b"200 result=123456\n" if "enter-inmate-id" in command else b"200 result=4321\n"
    if command.startswith("STREAM FILE"):
        return b"200 result=0 endpos=800\n"
    return b"200 result=1\n"


def converse(rfile, wfile, env: bytes) -> int:
    """Be Asterisk for one session; returns the number of commands answered."""
    wfile.write(env)
    wfile.flush()
    n = 0
    while True:
        line = rfile.readline()
        if not line:
            return n
        wfile.write(reply(line.decode()))
        wfile.flush()
        n += 1


def fastagi_once(port: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        converse(s.makefile("rb"), s.makefile("wb"), env_block("inmate", []))
    return (time.perf_counter() - t0) * 1000


def count_one_call(port: int, r) -> tuple[int, float]:
    """AGI commands and Redis commands (INFO delta, less the INFO itself) of one inmate flow."""
    before = r.info("stats")["total_commands_processed"]
    with socket.create_connection(("127.0.0.1", port)) as s:
        agi = converse(s.makefile("rb"), s.makefile("wb"), env_block("inmate", []))
    return agi, r.info("stats")["total_commands_processed"] - before - 1


def process_once() -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen([str(ROOT / ".venv/bin/ics-agi")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=os.environ)
    converse(p.stdout, p.stdin, env_block("", ["inmate"]))
    p.wait()
    return (time.perf_counter() - t0) * 1000


def hold_live(port: int, k: int, stop: threading.Event) -> list[socket.socket]:
    """K sessions parked mid-flow (waiting for digits), as live calls are."""
    socks = []
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(env_block("inmate", []))
        socks.append(s)
    return socks


def stats(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return f"{name:<34} n={len(xs):<4} median {statistics.median(xs):7.2f} ms   p99 {p99:7.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--live", type=int, default=100)
    args = ap.parse_args()

    cfg = config.load()
    store = Store(connect(cfg), cfg)
    with admin_redis() as admin:  # icsctl's Redis user may not flush (ics.redis_acl)
        admin.flushdb()
    store.create_facility("main", "Bench Facility")
    store.create_inmate(INMATE, "main", "Bench", PIN)
    store.approve_number(INMATE, NUMBER)
    store.create_account("fam1", "Bench", [NUMBER])
    store.adjust("fam1", "deposit", 10**9, "bench")

    # our own FastAGI server on a free port, with the configured sounds dir
    port = _free_port()
    env = dict(os.environ, ICS_FASTAGI_PORT=str(port), ICS_LOG_LEVEL="warning")
    if prompts.missing(cfg.sounds_dir):
        raise SystemExit(f"prompts missing under {cfg.sounds_dir}: run the stack (make up) first")
    srv = subprocess.Popen([str(ROOT / ".venv/bin/ics-fastagi")], env=env, stderr=subprocess.DEVNULL)
    os.environ["ICS_LOG_LEVEL"] = "warning"
    try:
        _wait_port(port)
        for _ in range(10):
            fastagi_once(port)  # warm up (the first call also records the inmate's name)
        agi_cmds, redis_cmds = count_one_call(port, store.r)
        fast_idle = [fastagi_once(port) for _ in range(args.runs)]
        proc_idle = [process_once() for _ in range(args.runs)]
        stop = threading.Event()
        live = hold_live(port, args.live, stop)
        time.sleep(0.5)
        fast_live = [fastagi_once(port) for _ in range(args.runs)]
        proc_live = [process_once() for _ in range(args.runs)]
        for s in live:
            s.close()
    finally:
        srv.terminate()
        srv.wait(5)
    print(f"inmate flow to the dial decision: {agi_cmds} AGI commands, {redis_cmds} Redis commands "
          f"(those the Lua hold runs included); runs={args.runs}")
    print(stats("FastAGI, idle", fast_idle))
    print(stats(f"FastAGI, {args.live} live sessions", fast_live))
    print(stats("process AGI, idle", proc_idle))
    print(stats(f"process AGI, {args.live} live sessions", proc_live))
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("FastAGI server did not start")


if __name__ == "__main__":
    sys.exit(main())
