"""Redis over TLS on the running stack (ICS_STACK_REDIS_TLS=1, README: Security): docker/stack.sh makes a
CA and Redis's certificate under .stack/tls, Redis serves TLS only, and the services, icsctl and the
tests' admin client reach it with rediss:// urls and ICS_REDIS_TLS_CA. A real call is placed,
accepted and billed through it; a plaintext client and one trusting another CA are refused.

When the session's stack runs plaintext, this module restarts Redis and the two services with TLS
on (Asterisk keeps running) and plaintext again afterwards.
"""

import os
import signal
import stat
import subprocess
import time

import pytest
import redis

from ics import config
from ics.store import connect
from tests.support import REPO, read_stack_env, services, stack_dir
from tests.support.callflow import NUMBER, answered, balance, press_when, wait_settled

pytestmark = pytest.mark.e2e
STACK_SH = REPO / "docker" / "stack.sh"


def _stop(name: str) -> None:
    """TERM a service of the stack (Redis: the single server, or each cluster node) and wait."""
    pids = (services.redis_cluster() if name == "redis" else None) or [services.pid(name)]
    for p in pids:
        if services.alive(p):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(services.alive(p) for p in pids):
        assert time.monotonic() < deadline, f"{name} did not stop on TERM"
        time.sleep(0.05)


def _restart_redis_and_services(tls: bool, stack: dict) -> None:
    for name in ("ami", "fastagi", "redis"):
        _stop(name)
    if tls:
        os.environ["ICS_STACK_REDIS_TLS"] = "1"  # (a services.restart in a test keeps it)
    else:
        os.environ.pop("ICS_STACK_REDIS_TLS", None)
    subprocess.run(["bash", str(STACK_SH), "up"], check=True, timeout=300, capture_output=True)
    env = read_stack_env()
    stack.clear()  # the session's stack.env: what every test on the stack puts in os.environ
    stack.update(env)
    os.environ.update(env)
    if not tls:
        os.environ.pop("ICS_REDIS_TLS_CA", None)


@pytest.fixture(scope="module")
def tls_stack(stack):
    if stack.get("ICS_REDIS_TLS_CA"):  # the session runs the stack with TLS already
        yield stack
        return
    saved = {k: os.environ.get(k) for k in ("ICS_STACK_REDIS_TLS", *stack)}
    _restart_redis_and_services(True, stack)
    try:
        yield stack
    finally:
        _restart_redis_and_services(False, stack)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def lines(tls_stack, phones):
    inmate, family = phones.phone("inmate1"), phones.phone(NUMBER)
    for p in (inmate, family):
        p.register(10)
        p.drain_incoming()
    return inmate, family, None


def test_the_stack_serves_redis_over_tls_only_with_its_own_ca(tls_stack):
    ca = stack_dir() / "tls" / "ca.crt"
    assert tls_stack["ICS_REDIS_TLS_CA"] == str(ca)
    assert all(u.startswith("rediss://") for u in tls_stack["ICS_REDIS_URL"].split(","))
    for key in ("ca.key", "redis.key"):  # private keys: root's alone, beside the stack, not in the repo
        assert stat.S_IMODE((stack_dir() / "tls" / key).stat().st_mode) == 0o600
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", "--error-unmatch", str(ca)], capture_output=True)
    assert r.returncode != 0
    # icsctl (its ACL user, stack.env) over TLS
    deadline = time.monotonic() + 15  # (the restarted listener's first heartbeat)
    while True:
        out = subprocess.run([str(REPO / ".venv" / "bin" / "icsctl"), "status"], env=os.environ.copy(),
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.returncode == 0, out.stderr


def test_a_call_over_tls_is_accepted_and_billed(tls_stack, ami, lines):
    world, call, callee, mark = answered(ami, lines)
    start = balance(world)
    press_when(ami, callee, "menu-accept", "1", mark, channel_prefix=f"PJSIP/{NUMBER}")
    ami.wait_for({"Event": "BridgeEnter", "Channel": lambda c: c.startswith(f"PJSIP/{NUMBER}")}, 15, since=mark)
    time.sleep(2)
    call.hangup()
    callee.wait_disconnected(20)
    rec = wait_settled(world, 20)
    assert rec["reason"] == "inmate_hangup", rec
    assert int(rec["billed_minutes"]) == 1 and int(rec["billed_cents"]) == 11  # the facility's 11 cents a minute
    assert balance(world) == start - 11


def test_a_plaintext_client_and_one_trusting_another_ca_are_refused(tls_stack, tmp_path):
    secrets = dict(line.split("=", 1) for line in (stack_dir() / "secrets.env").read_text().split())
    url = tls_stack["ICS_REDIS_URL"].split(",")[0]
    creds = {"ICS_REDIS_USERNAME": "fastagi", "ICS_REDIS_PASSWORD": secrets["REDIS_FASTAGI_PASSWORD"],
             "ICS_REDIS_TIMEOUT_MS": "2000"}
    good = connect(config.load(environ={"ICS_REDIS_URL": url, "ICS_REDIS_TLS_CA": tls_stack["ICS_REDIS_TLS_CA"],
                                        **creds}))
    assert good.ping() is True  # the same user over TLS with the stack's CA
    good.close()
    plain = config.load(environ={"ICS_REDIS_URL": url.replace("rediss://", "redis://"), **creds})
    with pytest.raises(redis.ConnectionError):
        connect(plain).ping()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", "other.key", "-out", "other.crt", "-days", "1", "-subj", "/CN=other"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=30)
    other = config.load(environ={"ICS_REDIS_URL": url, "ICS_REDIS_TLS_CA": str(tmp_path / "other.crt"), **creds})
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        connect(other).ping()
