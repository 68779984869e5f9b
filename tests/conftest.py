"""Fixtures for the end-to-end tests: the lab stack, pjsua2 phones, an AMI tap, Redis.

Nothing here runs unless a test asks for it: unit tests never need the stack.

    stack          session: `docker/stack.sh up` unless the stack already runs
                   (then `down` at the end only if this session started it);
                   returns stack.env as a dict
    phones         session: tests.support.phones.Harness
    ami            session: tests.support.ami_tap.AmiTap, logged in as ics
    redis_client   function: the lab's Redis as its admin user (a RedisCluster on the cluster lab),
                   flushed before the test

Under pytest-xdist every worker (gwN) first moves into its own network
namespace (tests/support/netns.py) and uses its own stack directory
(.stack/gwN, an Asterisk root copied from .stack/asterisk), so each worker
runs a whole stack on the usual loopback ports.

Every test on the stack fails on an ERROR or WARNING line Asterisk logged
while it ran, unless the line is on ASTERISK_LOG_ALLOWED below.

While a test that uses the stack runs, stack.env is in os.environ (restored
afterwards), so config.load() in the test sees the lab's Redis, AMI secret
and sounds directory. After every such test, calls still up are hung up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from tests.support import REPO, read_stack_env, stack_dir

STACK_SH = REPO / "docker" / "stack.sh"
STACK_FIXTURES = {"stack", "phones", "ami", "redis_client"}

# ERROR / WARNING lines Asterisk may log during a test without failing it, the one list.
# Each entry: (regex searched in the line, regex on the test's node id or None for
# any test, why the line is harmless there).
ASTERISK_LOG_ALLOWED: list[tuple[str, str | None, str]] = [
    # The test SIGKILLs ics-fastagi on purpose: an AGI that starts while it is down cannot
    # connect (the inmate flow: [ics-fail]; the hangup handler's settle: the listener settles).
    (r"res_agi\.c:\d+ (handle_connection: Connecting to '127\.0\.0\.1:4573' failed for url "
     r"'agi://127\.0\.0\.1:4573/\w[\w-]*': Connection refused|launch_netscript: Couldn't connect to any host\.  FastAGI failed\.)",
     r"test_fastagi_killed|\[fastagi-", "FastAGI killed by the test"),
    # Asterisk restarted or killed by the test: the lab's network namespace has only lo,
    # so the new process seeds its EID without an ethernet interface (harmless).
    (r"No ethernet interface found for seeding global EID", r"asterisk_(restart|killed)|\[asterisk-|node_killed",
     "Asterisk restarted by the test in a loopback-only namespace"),
    # An AMI client (the listener's ping, a login) landing in the second Asterisk takes to
    # shut down is refused; the connection then closes and is made again.
    (r"Unable to process manager action '(Ping|Login)'\. Asterisk is shutting down\.",
     r"asterisk_(restart|killed)|\[asterisk-", "AMI action during a deliberate Asterisk shutdown"),
    # A cluster node refuses SIP from anywhere but Kamailio (res_pjsip_acl): the test sends it
    # a handset's INVITE directly on purpose, and Asterisk says it dropped it.
    (r"res_pjsip_acl\.c:\d+ apply_acl: Incoming SIP message from 127\.0\.0\.1:\d+ did not pass ACL test",
     r"sip_only_from_kamailio", "a handset's INVITE sent straight to a node by the test"),
    # A called leg that leaves Dial's U() gosub other than by Return (the listener redirects it
    # to [ics-cut] when the inmate hangs up or a rule ends the call before the bridge, or the
    # called party hangs up during the menu): Asterisk pops the gosub and says so, then Dial
    # ends the call as usual.
    (r"app_stack\.c:\d+ (gosub_run: \S+ Abnormal 'Gosub\(ics-callee,s,1\([0-9a-f-]+\)\)' exit\.  "
     r"Popping routine return locations\.|balance_stack: No Gosub stack allocated\.)", None,
     "the called leg left the announcement gosub by a redirect or a hang-up"),
    # The same redirect while the menu waits for a key: the masquerade leaves the channel's
    # alert pipe signalled and the wait returns at once (the flow then sees the channel gone).
    (r"channel\.c:\d+ ast_waitfordigit_full: The FD we were waiting for has something waiting\.",
     None, "the called leg redirected while the menu waited for a key"),
    # The AMI listener killed by the test: the called leg's audio tap (an AudioSocket channel
    # streaming to the listener, ami/audiotap.py) loses its server and ends; the restarted
    # listener taps the call again.
    (r"(res_audiosocket\.c:\d+ ast_audiosocket_receive_frame_with_hangup: Failed to read header from "
     r"AudioSocket because: Connection reset by peer|chan_audiosocket\.c:\d+ audiosocket_read: Failed to "
     r"receive frame from AudioSocket server '127\.0\.0\.1:4575'|chan_audiosocket\.c:\d+ audiosocket_write: "
     r"Failed to forward frame from channel '\S+' to AudioSocket server '127\.0\.0\.1:4575')",
     r"listener_killed|listener_down|\[ami-", "the listener (the tap's AudioSocket server) killed by the test"),
]
_LOG_PROBLEM = re.compile(r"\] (ERROR|WARNING)\[")

_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_netns_name: str | None = None
_stack_base = stack_dir()
_file_durations: dict[str, float] = defaultdict(float)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end to end on the lab stack (real Asterisk 22, Redis, services, SIP phones)")
    global _netns_name, _stack_base
    if _WORKER and _netns_name is None and os.geteuid() == 0:
        # before any socket, thread or subprocess of the tests: all of them inherit it
        from tests.support import netns
        _stack_base = base = stack_dir()
        _netns_name = netns.enter(_WORKER)
        # (the Redis Cluster run has its own worker directories: make test runs both at once)
        cluster = os.environ.get("ICS_REDIS_CLUSTER", "").lower() in ("1", "true", "yes", "on")
        os.environ["ICS_STACK_DIR"] = str(base / (f"cluster-{_WORKER}" if cluster else _WORKER))


def pytest_unconfigure(config):
    global _netns_name
    if _netns_name:
        from tests.support import netns
        netns.delete(_netns_name)
        _netns_name = None


def pytest_runtest_logreport(report):
    _file_durations[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _file_durations:
        return
    tr = terminalreporter
    tr.write_sep("=", "durations per file (setup + call + teardown, summed)")
    for path, secs in sorted(_file_durations.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"{secs:8.1f}s  {path}")


def _stack_running() -> bool:
    r = subprocess.run(["bash", str(STACK_SH), "status"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0 and (stack_dir() / "stack.env").exists()


def _worker_root() -> None:
    """A worker's stack directory gets a copy of the provisioned Asterisk root (about 2 s)."""
    src = _stack_base / "asterisk"
    dst = stack_dir() / "asterisk"
    if not (src / ".ics-provisioned").exists():
        return  # nothing to copy: stack.sh up provisions the worker's root itself
    with contextlib.suppress(FileNotFoundError):  # cp -a keeps the marker's time: same root
        if (dst / ".ics-provisioned").stat().st_mtime == (src / ".ics-provisioned").stat().st_mtime:
            return
    tmp = dst.with_name("asterisk.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(tmp)], check=True, timeout=600)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


@pytest.fixture(scope="session")
def stack():
    started = False
    if _netns_name:
        # a fresh namespace: nothing of ours runs in it; pidfiles left by an
        # earlier run of this worker name processes in a namespace now gone
        _worker_root()
        subprocess.run(["bash", str(STACK_SH), "down"], timeout=120, capture_output=True)
    log = stack_dir() / "log" / "asterisk.log"
    start = _log_size(log)
    if not _stack_running():
        subprocess.run(["bash", str(STACK_SH), "up"], check=True, timeout=1800)
        started = True
    try:
        env = read_stack_env()
        if not env:
            pytest.fail(f"{stack_dir() / 'stack.env'} missing after docker/stack.sh up")
        if started:
            _check_asterisk_log(log, start, "docker/stack.sh up")
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
    from tests.support import admin_redis
    # as the lab's admin user (it flushes): the services and icsctl log in as their own ACL users
    client = admin_redis(stack)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_client(_redis_session):
    _redis_session.flushdb()
    return _redis_session


def _log_size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def asterisk_log_problems(text: str, nodeid: str = "") -> list[str]:
    """ERROR / WARNING lines of Asterisk's log text that ASTERISK_LOG_ALLOWED does not cover."""
    allowed = [pattern for pattern, where, _why in ASTERISK_LOG_ALLOWED
               if where is None or re.search(where, nodeid)]
    return [line for line in text.splitlines()
            if _LOG_PROBLEM.search(line) and not any(re.search(p, line) for p in allowed)]


@pytest.fixture(autouse=True)
def _stack_env(request):
    """stack.env in os.environ for tests on the stack; leftover calls hung up afterwards;
    fails the test on an Asterisk ERROR / WARNING line not on ASTERISK_LOG_ALLOWED."""
    if not STACK_FIXTURES & set(request.fixturenames):
        yield
        return
    env = request.getfixturevalue("stack")
    _after_a_restart(request)
    log = stack_dir() / "log" / "asterisk.log"
    start = _log_size(log)
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
    _check_asterisk_log(log, start, request.node.nodeid)
    _check_redis_acl_log(request.node.nodeid)


def _check_redis_acl_log(nodeid: str) -> None:
    """Fail on a Redis command or key a service's ACL user was refused during the test
    (ics.redis_acl: each has only what it uses; a refusal there is a call that failed).
    A test that provokes refusals on purpose resets the log itself."""
    from tests.support import admin_redis
    try:
        with admin_redis() as admin:
            denied = admin.acl_log()
            admin.acl_log_reset()
    except Exception:
        return  # Redis down at the end of a fault test: nothing to read
    denied = [d for d in denied if d.get("username") != "default"]
    if denied:
        pytest.fail(f"Redis refused {len(denied)} command(s) to a service's ACL user during {nodeid}:\n"
                    + "\n".join(f"{d.get('username')}: {d.get('reason')} {d.get('object')} "
                                 f"({str(d.get('client-info', ''))[-60:]})" for d in denied[:10]), pytrace=False)


_asterisk_pid: int | None = None


def _after_a_restart(request) -> None:
    """An earlier test restarted Asterisk (fault tests): its registrar is empty and the
    AMI tap's connection died with it; register the phones and log in again first."""
    global _asterisk_pid
    from tests.support import services
    now = services.pid("asterisk")
    restarted = _asterisk_pid is not None and now != _asterisk_pid
    _asterisk_pid = now
    tap = request.getfixturevalue("ami") if "ami" in request.fixturenames else None
    if hasattr(tap, "ensure_connected"):  # (a unit test may name its own fixture "ami")
        tap.ensure_connected()
    if restarted and _harness is not None:
        _harness.register_all()


def _check_asterisk_log(log, start: int, nodeid: str) -> None:
    """Fail on ERROR / WARNING lines Asterisk wrote to log after byte start (not allowed for nodeid)."""
    if _log_size(log) < start:
        start = 0  # a new log (the file was replaced)
    try:
        with open(log, "rb") as fh:
            fh.seek(start)
            problems = asterisk_log_problems(fh.read().decode(errors="replace"), nodeid)
    except FileNotFoundError:
        return
    if problems:
        pytest.fail(f"Asterisk logged {len(problems)} ERROR/WARNING line(s) during {nodeid} "
                    f"(not on ASTERISK_LOG_ALLOWED in tests/conftest.py):\n" + "\n".join(problems[:20]),
                    pytrace=False)
