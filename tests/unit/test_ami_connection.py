"""The AMI guards against a scripted AMI server on loopback (replayed transcripts)."""

import asyncio

import pytest

from ami.connection import GuardedManager, UnsafeAction

BANNER = b"Asterisk Call Manager/9.0.0\r\n"


class FakeAMI:
    """Answers Login, records every action, and does what the test says with the rest."""

    def __init__(self):
        self.actions: list[dict] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.answer_pings = True
        self.answer_all = False  # every other action answered with a plain Success too

    async def handle(self, reader, writer):
        self.writers.append(writer)
        writer.write(BANNER)
        buf = b""
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                raw, buf = buf.split(b"\r\n\r\n", 1)
                action = dict(line.split(": ", 1) for line in raw.decode().split("\r\n") if ": " in line)
                self.actions.append(action)
                name = action.get("Action", "").lower()
                aid = action.get("ActionID", "")
                if name == "login" or (name == "ping" and self.answer_pings) or (self.answer_all and name != "ping"):
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\n\r\n".encode())

    def send(self, text: str):
        for w in self.writers:
            w.write(text.replace("\n", "\r\n").encode())

    def drop(self):
        for w in self.writers:
            w.close()
        self.writers.clear()


async def until(pred, timeout=3.0):
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    assert pred(), "condition not met in time"


async def written_so_far(mgr):
    """Returns once the fake server has answered a Ping sent now: everything the manager wrote
    before it (a re-sent action, a refused one) has reached the fake by then (one TCP stream)."""
    await asyncio.sleep(0)  # a task the last event started runs first
    await asyncio.wait_for(mgr.send_action({"Action": "Ping"}), 3)


@pytest.fixture
async def ami():
    fake = FakeAMI()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mgr = GuardedManager(host="127.0.0.1", port=port, username="u", secret="s",
                         loop=asyncio.get_running_loop(), reconnect_timeout=0.1,
                         ping_interval_s=0.2, ping_timeout_s=0.3)
    mgr.connect()
    await asyncio.wait_for(mgr.connected_event.wait(), 3)
    yield fake, mgr
    mgr.close()
    mgr.connection_lost = lambda exc: None  # no reconnect while tearing down
    fake.drop()
    server.close()
    await server.wait_closed()


async def test_callback_errors_are_logged_and_dispatch_goes_on(ami, capsys):
    fake, mgr = ami
    seen = []

    def broken(m, e):
        raise RuntimeError("boom in sync callback")

    async def broken_async(m, e):
        raise RuntimeError("boom in coroutine callback")

    mgr.register_event("Hangup", broken)
    mgr.register_event("Hangup", broken_async)
    mgr.register_event("Hangup", lambda m, e: seen.append(e["Uniqueid"]))
    # a malformed event, an out-of-order one (Hangup before any Newchannel), then a normal one
    fake.send("Event: Hangup\nthis line has no colon\n\nEvent: Hangup\nUniqueid: 2\n\nEvent: Hangup\nUniqueid: 3\n\n")
    for _ in range(50):
        await asyncio.sleep(0.02)
        if "3" in seen:
            break
    assert "2" in seen and "3" in seen
    err = capsys.readouterr()
    out = err.out + err.err
    assert "boom in sync callback" in out and "boom in coroutine callback" in out


async def test_line_breaks_in_action_values_are_refused(ami):
    fake, mgr = ami
    with pytest.raises(UnsafeAction):
        mgr.send_action({"Action": "Hangup", "Channel": "PJSIP/x\r\nAction: Originate"})
    await written_so_far(mgr)
    assert not any(a.get("Action") == "Originate" for a in fake.actions)
    assert not any(a.get("Action") == "Hangup" for a in fake.actions)


async def test_unanswered_actions_fail_and_are_not_resent_after_reconnect(ami):
    fake, mgr = ami
    fut = mgr.send_action({"Action": "Originate", "Channel": "Local/1@x"})
    await until(lambda: any(a.get("Action") == "Originate" for a in fake.actions))
    fake.drop()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(fut, 2)
    await asyncio.wait_for(mgr.connected_event.wait(), 3)  # reconnected and logged in again
    booted = asyncio.Event()
    mgr.register_event("FullyBooted", lambda m, e: booted.set())  # runs after panoramisk's re-send hook
    fake.send("Event: FullyBooted\nStatus: Fully Booted\n\n")
    await asyncio.wait_for(booted.wait(), 3)
    await written_so_far(mgr)
    assert sum(1 for a in fake.actions if a.get("Action") == "Originate") == 1


async def test_ping_timeout_forces_a_reconnect(ami):
    fake, mgr = ami
    logins = sum(1 for a in fake.actions if a.get("Action") == "Login")
    fake.answer_pings = False
    for _ in range(60):
        await asyncio.sleep(0.05)
        if sum(1 for a in fake.actions if a.get("Action") == "Login") > logins:
            break
    assert sum(1 for a in fake.actions if a.get("Action") == "Login") > logins
