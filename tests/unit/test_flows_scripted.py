"""The call flows over both transports against a scripted Asterisk and a real Redis.

The same inmate flow runs behind the FastAGI server (socket) and as a process
AGI script (stdin/stdout); both must reach the same decision with the same
commands. Error paths must send the channel to [ics-fail].
"""

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agi.server import FastAGIServer
from ics import config, keys, records
from ics.store import Store, connect

ROOT = Path(__file__).resolve().parents[2]
INMATE, PIN, NUMBER = "123456", "4321", "3125550100"


def env_block(route: str, args=(), calleridname="Handset 1", extension=NUMBER) -> bytes:
    lines = ["agi_network: yes", f"agi_network_script: {route}", "agi_channel: PJSIP/inmate1-00000001",
             "agi_uniqueid: 1.1", f"agi_calleridname: {calleridname}", f"agi_extension: {extension}"]
    lines += [f"agi_arg_{i}: {a}" for i, a in enumerate(args, 1)]
    return ("\n".join(lines) + "\n\n").encode()


class ScriptedAsterisk:
    def __init__(self, digits=(INMATE, PIN), facility="main"):
        self.digits = list(digits)
        self.facility = facility
        self.commands: list[str] = []

    def reply(self, cmd: str) -> bytes:
        if cmd.startswith('GET VARIABLE "ICS_FACILITY"'):
            return f"200 result=1 ({self.facility})\n".encode()
        if cmd.startswith("GET DATA"):
            return f"200 result={self.digits.pop(0) if self.digits else ''}\n".encode()
        if cmd.startswith("STREAM FILE"):
            return b"200 result=0 endpos=800\n"
        if cmd.startswith("EXEC"):
            return b"200 result=0\n"  # the application's return code: 0 = it ran (e.g. MixMonitor started)
        return b"200 result=1\n"

    def converse(self, rfile, wfile, env: bytes):
        wfile.write(env)
        wfile.flush()
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode().rstrip("\n")
            self.commands.append(cmd)
            wfile.write(self.reply(cmd))
            wfile.flush()


def make_world(redis_url, tmp_path, **facility):
    """A facility, an inmate with a recorded name, one approved number and its funded account."""
    cfg = config.load(environ={"ICS_REDIS_URL": redis_url, "ICS_SOUNDS_DIR": str(tmp_path)})
    store = Store(connect(cfg), cfg)
    store.create_facility("main", "Test Facility", **facility)
    store.create_inmate(INMATE, "main", "Alex", PIN)
    store.set_name_recorded(INMATE)
    store.approve_number(INMATE, NUMBER)
    store.create_account("fam1", "Sam", [NUMBER])
    store.adjust("fam1", "deposit", 500)
    return cfg, store


def listener_up(store, live_calls: int = 0) -> None:
    """The AMI listener's heartbeat and live count as ami.listener writes them (here without
    expiry): the inmate flow places no call without them."""
    store.r.set(keys.LISTENER_ALIVE, 1)
    store.r.set(keys.LIVE_CALLS, live_calls)


@pytest.fixture
def world(redis_url, tmp_path):
    return make_world(redis_url, tmp_path)


def serve_fastagi(world):
    """The FastAGI server on a free port for a test world (the listener's heartbeat set, as
    ami.listener keeps it); yields the port, stops the server afterwards."""
    cfg, store = world
    cfg.values["fastagi"]["port"] = 0
    listener_up(store)
    srv = FastAGIServer(cfg, store)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server(world):
    yield from serve_fastagi(world)


def fastagi(port, script, env):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        script.converse(s.makefile("rb"), s.makefile("wb"), env)
    return script.commands


def process(script, env, redis_url):
    p = subprocess.Popen([sys.executable, "-m", "agi.process"], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, ICS_REDIS_URL=redis_url))
    script.converse(p.stdout, p.stdin, env)
    p.wait(10)
    return script.commands


def decision(commands):
    return [c for c in commands if c.startswith('SET VARIABLE "ICS_RESULT"')][-1]


def test_fastagi_and_process_agi_run_the_same_flow(server, world, redis_url):
    cfg, store = world
    via_socket = fastagi(server, ScriptedAsterisk(), env_block("inmate"))
    via_process = process(ScriptedAsterisk(), env_block("", ["inmate"]), redis_url)
    assert decision(via_socket) == decision(via_process) == 'SET VARIABLE "ICS_RESULT" "dial"'
    strip = lambda cmds: [c for c in cmds if "ICS_CALL_ID" not in c]  # noqa: E731 (ids differ)
    assert strip(via_socket) == strip(via_process)
    assert 'SET VARIABLE "ICS_DIAL" "PJSIP/3125550100"' in via_socket
    # each call holds its first minute (the listener holds each next one): 2 x 11 cents
    assert store.account("fam1").held_cents == 2 * 11


def test_unexpected_error_sends_the_channel_to_the_fail_context(server, world):
    # a phone with an unknown facility is a provisioning fault: fail closed
    cmds = fastagi(server, ScriptedAsterisk(facility="nowhere"), env_block("inmate"))
    assert cmds[-3:] == ['SET CONTEXT "ics-fail"', 'SET EXTENSION "s"', 'SET PRIORITY "1"']
    assert not any("ICS_DIAL" in c for c in cmds)


def test_unknown_route_fails_closed(server):
    cmds = fastagi(server, ScriptedAsterisk(), env_block("no-such-route"))
    assert cmds == ['SET CONTEXT "ics-fail"', 'SET EXTENSION "s"', 'SET PRIORITY "1"']


def test_malformed_environment_closes_without_a_command(server):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(b"agi_channel: X\nthis is not an env line\n\n")
        assert s.makefile("rb").readline() == b""


def test_redis_down_means_no_call(world, tmp_path):
    cfg, store = world
    down = config.load(environ={"ICS_REDIS_URL": "redis://127.0.0.1:1/0", "ICS_SOUNDS_DIR": str(tmp_path),
                                "ICS_REDIS_TIMEOUT_MS": "200"})
    down.values["fastagi"]["port"] = 0
    srv = FastAGIServer(down, Store(connect(down), down))
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        cmds = fastagi(srv.server_address[1], ScriptedAsterisk(), env_block("inmate"))
    finally:
        srv.shutdown()
        srv.server_close()
    assert cmds[-3:] == ['SET CONTEXT "ics-fail"', 'SET EXTENSION "s"', 'SET PRIORITY "1"']
    assert not any("ICS_DIAL" in c for c in cmds)


def test_caller_name_with_backslash_is_one_quoted_argument(server, world):
    cmds = fastagi(server, ScriptedAsterisk(), env_block("inmate", calleridname="a\\nb"))
    assert 'SET VARIABLE "ICS_STATION" "a\\\\nb"' in cmds  # backslash-n text, quoted, one argument


def test_settle_route_is_idempotent(server, world):
    cfg, store = world
    cmds = fastagi(server, ScriptedAsterisk(), env_block("inmate"))
    call_id = [c for c in cmds if "ICS_CALL_ID" in c][0].split('"')[3]
    records.update(store.r, call_id, bridged_ms=records.get(store.r, call_id)["started_ms"])
    for _ in range(2):
        fastagi(server, ScriptedAsterisk(), env_block("settle", [call_id, "ANSWER", "PJSIP/3125550100-1"]))
    rec = records.get(store.r, call_id)
    assert rec["settled"] == "1" and rec["billed_minutes"] >= 1
    assert store.account("fam1").balance_cents == 500 - rec["billed_cents"]
    assert store.account("fam1").held_cents == 0
    assert [e["kind"] for e in store.ledger("fam1")].count("charge") == 1


def recorded(cmds) -> bool:
    return any(c.startswith("RECORD FILE") for c in cmds) or any('"ics/prompts/record-name"' in c for c in cmds)


@pytest.mark.parametrize("refusal, setup", [
    ("inmate_suspended", lambda store: store.set_inmate_status(INMATE, "suspended")),
    ("not_approved", lambda store: store.r.delete(keys.approved(INMATE))),
    ("insufficient_funds", lambda store: store.refund("fam1", None)),
])
def test_a_refused_inmate_records_no_name(server, world, refusal, setup):
    """First use: the name is recorded only once every check passed (never by an inmate
    who is then refused, e.g. a suspended one)."""
    cfg, store = world
    store.r.hset(keys.inmate(INMATE), "name_recorded", "0")
    setup(store)
    cmds = fastagi(server, ScriptedAsterisk(), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"'
    assert records.recent(store.r, 1)[0]["reason"] == refusal
    assert not recorded(cmds) and store.inmate(INMATE)["name_recorded"] == "0"


def test_no_call_while_the_listener_is_down(server, world):
    """Fail closed: without the AMI listener's heartbeat nothing would enforce the call's rules
    or hold its next minute, so the call is refused with the system-error prompt, nothing held."""
    cfg, store = world
    store.r.delete(keys.LISTENER_ALIVE)
    cmds = fastagi(server, ScriptedAsterisk(), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"'
    assert records.recent(store.r, 1)[0]["reason"] == "system_unavailable"
    assert any(c.startswith("STREAM FILE") and "system-error" in c for c in cmds)
    assert store.account("fam1").held_cents == 0
    listener_up(store)
    cmds = fastagi(server, ScriptedAsterisk(), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "dial"'


def test_the_name_is_recorded_after_the_checks_then_the_call_dials(server, world):
    cfg, store = world
    store.r.hset(keys.inmate(INMATE), "name_recorded", "0")
    cmds = fastagi(server, ScriptedAsterisk(), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "dial"' and recorded(cmds)
    rec = [i for i, c in enumerate(cmds) if c.startswith("RECORD FILE")][0]
    assert INMATE in cmds[rec] and rec < cmds.index('SET VARIABLE "ICS_RESULT" "dial"')
    assert store.inmate(INMATE)["name_recorded"] == "1"
