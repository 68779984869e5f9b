"""Fixtures for the end-to-end tests: the lab stack, pjsua2 phones, an AMI tap, Redis.

Nothing here runs unless a test asks for it: unit tests never need the stack.

    stack          session: `docker/stack.sh up` unless the stack already runs
                   (then `down` at the end only if this session started it);
                   returns stack.env as a dict
    phones         session: tests.support.phones.Harness
    ami            session: tests.support.ami_tap.AmiTap, logged in as ics
    redis_client   function: redis.Redis on ICS_REDIS_URL, flushed before the test

While a test that uses the stack runs, stack.env is in os.environ (restored
afterwards), so config.load() in the test sees the lab's Redis, AMI secret
and sounds directory. After every such test, calls still up are hung up.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import REPO, read_stack_env, stack_dir

STACK_SH = REPO / "docker" / "stack.sh"
STACK_FIXTURES = {"stack", "phones", "ami", "redis_client"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end to end on the lab stack (real Asterisk 22, Redis, services, SIP phones)")


def _stack_running() -> bool:
    r = subprocess.run(["bash", str(STACK_SH), "status"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and (stack_dir() / "stack.env").exists()


@pytest.fixture(scope="session")
def stack():
    started = False
    if not _stack_running():
        subprocess.run(["bash", str(STACK_SH), "up"], check=True, timeout=1800)
        started = True
    env = read_stack_env()
    if not env:
        pytest.fail(f"{stack_dir() / 'stack.env'} missing after docker/stack.sh up")
    try:
        yield env
    finally:
        if started:
            subprocess.run(["bash", str(STACK_SH), "down"], timeout=120)


_harness = None


@pytest.fixture(scope="session")
def phones(stack):
    global _harness
    from tests.support.phones import Harness
    _harness = Harness()
    try:
        yield _harness
    finally:
        h, _harness = _harness, None
        h.shutdown()


@pytest.fixture(scope="session")
def ami(stack):
    from tests.support.ami_tap import AmiTap
    tap = AmiTap.from_env()
    try:
        yield tap
    finally:
        tap.close()


@pytest.fixture(scope="session")
def _redis_session(stack):
    import redis
    client = redis.Redis.from_url(stack["ICS_REDIS_URL"], decode_responses=True,
                                  socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_client(_redis_session):
    _redis_session.flushdb()
    return _redis_session


@pytest.fixture(autouse=True)
def _stack_env(request):
    """stack.env in os.environ for tests on the stack; leftover calls hung up afterwards."""
    if not STACK_FIXTURES & set(request.fixturenames):
        yield
        return
    env = request.getfixturevalue("stack")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if _harness is not None:
            _harness.hangup_all()
