"""What TLS costs per Redis operation (README, Security): the same commands, one at a time, against
two redis-server on loopback started here, one plaintext and one serving only TLS (as docker/stack.sh
runs it with ICS_STACK_REDIS_TLS=1: a CA made here, no client certificates, an ACL user's password),
both reached through ics.store.connect as the services are. Also a new connection (TCP, TLS handshake,
HELLO/AUTH): what icsctl pays once per command; the services keep theirs.

    .venv/bin/python bench/redis_tls.py [--n 3000]
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ics import config  # noqa: E402
from ics.store import connect  # noqa: E402

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(d: Path, port: int, tls: bool, password: str) -> subprocess.Popen:
    listen = (["--port", "0", "--tls-port", str(port), "--tls-cert-file", "redis.crt", "--tls-key-file", "redis.key",
               "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"] if tls else ["--port", str(port)])
    return subprocess.Popen(["redis-server", "--bind", "127.0.0.1", *listen, "--save", "", "--appendonly", "no",
                             "--requirepass", password, "--loglevel", "warning"],
                            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        openssl(d, "req", "-x509", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ca")
        openssl(d, "req", *EC, "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=redis")
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(d, "x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "redis.crt", "-days", "1", "-extfile", "ext.cnf")
        password = secrets.token_hex(16)
        ports = {"plaintext": free_port(), "TLS": free_port()}
        procs = [server(d, ports["plaintext"], False, password), server(d, ports["TLS"], True, password)]
        try:
            cfgs = {name: config.load(environ={
                "ICS_REDIS_URL": f"{'rediss' if name == 'TLS' else 'redis'}://127.0.0.1:{port}/0",
                "ICS_REDIS_TLS_CA": str(d / "ca.crt") if name == "TLS" else "",
                "ICS_REDIS_PASSWORD": password, "ICS_REDIS_TIMEOUT_MS": "5000"}) for name, port in ports.items()}
            deadline = time.monotonic() + 10
            clients = {}
            for name, cfg in cfgs.items():
                while True:
                    try:
                        clients[name] = connect(cfg)
                        clients[name].ping()
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            value = "x" * 200  # about a call record's field set
            ops = {
                "PING": lambda r: r.ping(),
                "SET 200 B": lambda r: r.set("k", value),
                "GET 200 B": lambda r: r.get("k"),
                "EVALSHA (HINCRBY)": None,
                "pipeline of 10 HGET": lambda r: r.pipeline(transaction=False).hget("h", "a").hget("h", "b")
                .hget("h", "c").hget("h", "d").hget("h", "e").hget("h", "f").hget("h", "g").hget("h", "h")
                .hget("h", "i").hget("h", "j").execute(),
                "new connection + AUTH + PING": None,
            }
            print(f"{n} operations each, one at a time, loopback; p50 / p99 in microseconds")
            print(f"{'operation':32s} {'plaintext':>18s} {'TLS':>18s} {'TLS extra p50':>14s}")
            for op, fn in ops.items():
                row = {}
                for name, r in clients.items():
                    if op.startswith("EVALSHA"):
                        script = r.register_script("return redis.call('HINCRBY', KEYS[1], 'c', ARGV[1])")
                        fn = lambda r, s=script: s(keys=["acct"], args=[1])  # noqa: E731
                    if op.startswith("new connection"):
                        cfg = cfgs[name]
                        fn = lambda r, cfg=cfg: (lambda c: (c.ping(), c.close()))(connect(cfg))  # noqa: E731
                    fn(r)
                    row[name] = timed(lambda: fn(r), n if not op.startswith("new") else max(n // 10, 50))
                p = {k: (statistics.median(v), v[int(len(v) * 0.99) - 1]) for k, v in row.items()}
                print(f"{op:32s} {p['plaintext'][0]:8.0f} / {p['plaintext'][1]:7.0f} {p['TLS'][0]:8.0f} / "
                      f"{p['TLS'][1]:7.0f} {p['TLS'][0] - p['plaintext'][0]:+11.0f} us")
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
