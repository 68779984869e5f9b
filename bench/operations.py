"""What operating the stack costs: a scrape of each /metrics and /health, the metrics on the call
path, and a Redis login as a service's ACL user (the services keep their connections; icsctl logs
in once per command). Runs against the stack `make up` started (its stack.env).

    .venv/bin/python bench/operations.py [--n 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ics import config, metrics  # noqa: E402
from ics.store import connect  # noqa: E402

ENDPOINTS = {"ics-fastagi /metrics": (config.DEFAULTS["fastagi"]["metrics_port"], "/metrics"),
             "ics-fastagi /health": (config.DEFAULTS["fastagi"]["metrics_port"], "/health"),
             "ics-ami /metrics": (config.DEFAULTS["ami"]["metrics_port"], "/metrics"),
             "ics-ami /health": (config.DEFAULTS["ami"]["metrics_port"], "/health"),
             "Asterisk res_prometheus": (8088, "/metrics")}


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def show(name: str, ms: list[float], unit: str = "ms", scale: float = 1.0) -> None:
    ms = sorted(x * scale for x in ms)
    print(f"{name:32s} p50 {statistics.median(ms):8.3f} {unit}  p99 {ms[int(len(ms) * 0.99) - 1]:8.3f} {unit}"
          f"  max {ms[-1]:8.3f} {unit}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    cfg = config.load()
    print(f"{n} requests each, one at a time, on loopback")
    for name, (port, path) in ENDPOINTS.items():
        url = f"http://127.0.0.1:{port}{path}"
        size = len(urllib.request.urlopen(url, timeout=5).read())
        show(f"{name} ({size} B)", timed(lambda: urllib.request.urlopen(url, timeout=5).read(), n))
    counter = metrics.CALLS.labels("bench", "bench")
    show("counter inc (call settled)", timed(counter.inc, n * 100), "us", 1000)
    show("histogram observe (set-up)", timed(lambda: metrics.SETUP.observe(0.01), n * 100), "us", 1000)

    def login():
        r = connect(cfg)
        r.ping()
        r.close()
    show(f"Redis connect + AUTH as {cfg['redis']['username'] or 'default'}", timed(login, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
