"""Shared unit-test fixtures: one real redis-server per test session.

`redis_url` gives every test an empty database on a private redis-server
(loopback, no persistence) started from the Debian binary; `store` is an
ics.store.Store on it. Tests that need Redis are skipped, with the reason, when
redis-server is not installed.

With ICS_REDIS_CLUSTER=1 in the environment (make test-redis-cluster) the session's Redis is a
3-master, 3-replica Redis Cluster instead (docker/redis-cluster.sh), and `redis_url` is the
comma-separated list of its nodes, which ics.config / ics.store.connect read as a cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from ics import config
from ics.store import Store, connect

START_TIMEOUT_S = 10
CLUSTER = os.environ.get("ICS_REDIS_CLUSTER", "").lower() in ("1", "true", "yes", "on")
CLUSTER_SH = Path(__file__).resolve().parents[2] / "docker" / "redis-cluster.sh"


def client(url: str) -> redis.Redis:
    """A client for redis_url: a RedisCluster when it lists the cluster's nodes."""
    return connect(config.load(environ={"ICS_REDIS_URL": url}))


def _cluster(workdir) -> tuple[str, list[str]]:
    """A 3-master, 3-replica cluster on six free ports (and their bus ports, +10000)."""
    for base in range(21000, 29000, 10):
        ports = [base + i for i in range(6)]
        try:
            for p in ports + [p + 10000 for p in ports]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        subprocess.run(["bash", str(CLUSTER_SH), "start", str(workdir), str(base)], check=True, timeout=60,
                       env=dict(os.environ, ICS_REDIS_APPENDONLY="no"))
        return ",".join(f"redis://127.0.0.1:{p}" for p in ports), ports
    raise RuntimeError("no six free ports for a Redis Cluster")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(exe: str, workdir) -> tuple[subprocess.Popen, int]:
    """Start redis-server on a free port and wait for PING; retried if the port was taken meanwhile."""
    last_error = ""
    for _ in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(workdir), "--loglevel", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2, socket_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = proc.stdout.read().decode(errors="replace").strip()
                break
            try:
                if client.ping():
                    client.close()
                    return proc, port
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        else:
            proc.kill()
            proc.wait(5)
            last_error = f"no PING reply within {START_TIMEOUT_S} s"
        client.close()
    raise RuntimeError(f"could not start redis-server: {last_error}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """URL of a private redis-server for the whole session (killed at the end)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); "
                    "tests that need a real Redis are skipped")
    if CLUSTER:
        workdir = tmp_path_factory.mktemp("redis-cluster")
        url, _ = _cluster(workdir)
        try:
            yield url
        finally:
            subprocess.run(["bash", str(CLUSTER_SH), "stop", str(workdir)], timeout=60)
        return
    proc, port = _start(exe, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


@pytest.fixture
def redis_url(redis_server):
    """The session's redis-server, with an empty database for this test."""
    c = client(redis_server)
    c.flushdb()  # (on a cluster: every master)
    c.close()
    return redis_server


@pytest.fixture
def store(redis_url, tmp_path):
    """A Store on the empty test database; config from defaults plus ICS_REDIS_URL, ICS_SOUNDS_DIR and
    ICS_RECORDINGS_DIR (both in tmp_path)."""
    cfg = config.load(environ={"ICS_REDIS_URL": redis_url, "ICS_SOUNDS_DIR": str(tmp_path / "sounds"),
                               "ICS_RECORDINGS_DIR": str(tmp_path / "monitor")})
    s = Store(connect(cfg), cfg)
    yield s
    s.r.close()


# A Wednesday noon, UTC: 12 h from midnight and days from an ISO week's or a
# month's edge in every time zone a facility may use.
FIXED_NOW_MS = 1_796_212_800_000  # 2026-12-02 12:00:00 UTC


@pytest.fixture
def clock(monkeypatch):
    """An injected clock for tests that read days, ISO weeks or months: ics.store.now_ms (and
    every module that imported it) starts at FIXED_NOW_MS and advances in real time, so such a
    test cannot flake at midnight, on Monday or on the 1st. Returns the now_ms function."""
    import sys
    import time as _time

    from ics import store as store_mod
    real = store_mod.now_ms
    t0 = _time.monotonic_ns()

    def now_ms() -> int:
        return FIXED_NOW_MS + (_time.monotonic_ns() - t0) // 1_000_000

    for name, mod in list(sys.modules.items()):
        if name.split(".")[0] in ("ics", "agi", "ami") and getattr(mod, "now_ms", None) is real:
            monkeypatch.setattr(mod, "now_ms", now_ms)
    return now_ms
