"""The test-side AMI tap against a scripted AMI server on a loopback socket."""

import socket
import threading

import pytest

from tests.support.ami_tap import AmiTap, matcher
from tests.support.phones import sip_quote


class ScriptedAmi:
    """Answers Login, replays events, answers PJSIPShowEndpoint with an event list."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.received: list[str] = []
        self.conn = None
        threading.Thread(target=self._serve, daemon=True).start()

    def send(self, **headers):
        msg = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.conn.sendall(msg.encode())

    def _serve(self):
        self.conn, _ = self.srv.accept()
        self.conn.sendall(b"Asterisk Call Manager/9.0.0\r\n")
        buf = b""
        while True:
            data = self.conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                raw, buf = buf.split(b"\r\n\r\n", 1)
                text = raw.decode()
                self.received.append(text)
                h = dict(line.split(": ", 1) for line in text.split("\r\n"))
                aid = h.get("ActionID", "")
                if h["Action"] == "Login":
                    ok = h.get("Secret") == "s3cret"
                    self.send(Response="Success" if ok else "Error", ActionID=aid,
                              Message="Authentication accepted" if ok else "Authentication failed")
                elif h["Action"] == "PJSIPShowEndpoint":
                    self.send(Response="Success", ActionID=aid, EventList="start",
                              Message="Following are Events for each object associated with the Endpoint")
                    self.send(Event="EndpointDetail", ActionID=aid, ObjectName=h["Endpoint"])
                    self.send(Event="ContactStatusDetail", ActionID=aid, URI="sip:x@127.0.0.1:5")
                    self.send(Event="EndpointDetailComplete", ActionID=aid, EventList="Complete")
                elif h["Action"] == "Logoff":
                    return


@pytest.fixture
def server():
    return ScriptedAmi()


def test_login_events_marks_and_event_lists(server):
    tap = AmiTap(port=server.port, secret="s3cret", timeout=5)
    try:
        server.send(Event="Newchannel", Channel="PJSIP/a-1")
        tap.wait_for({"Event": "Newchannel"}, 2)
        mark = tap.mark()
        server.send(Event="DTMFEnd", Channel="PJSIP/a-1", Digit="1", Direction="Received")
        server.send(Event="AGIExecStart", Channel="PJSIP/a-1", Command="GET DATA ics/prompts/x 5000 10")
        ev = tap.wait_for({"Event": "AGIExecStart", "Command": lambda c: c.startswith("GET DATA")}, 2, since=mark)
        assert ev["Channel"] == "PJSIP/a-1"
        assert [e["Event"] for e in tap.since(mark)] == ["DTMFEnd", "AGIExecStart"]
        assert not tap.events({"Event": "Newchannel"}, since=mark)
        resp = tap.action("PJSIPShowEndpoint", Endpoint="3125550100", timeout=2)
        assert [e["Event"] for e in resp["_events"]] == [
            "EndpointDetail", "ContactStatusDetail", "EndpointDetailComplete"]
    finally:
        tap.close()


def test_timeout_lists_recent_events(server):
    tap = AmiTap(port=server.port, secret="s3cret", timeout=5)
    try:
        server.send(Event="Hangup", Channel="PJSIP/b-2", Cause="16")
        tap.wait_for({"Event": "Hangup"}, 2)
        with pytest.raises(TimeoutError, match="Hangup Channel=PJSIP/b-2"):
            tap.wait_for({"Event": "BridgeEnter"}, 0.3)
    finally:
        tap.close()


def test_crlf_in_action_values_is_refused(server):
    tap = AmiTap(port=server.port, secret="s3cret", timeout=5)
    try:
        with pytest.raises(ValueError):
            tap.action("Originate", Channel="PJSIP/x\r\nAction: Command")
        assert not any("Originate" in m for m in server.received)
    finally:
        tap.close()


def test_bad_secret_fails_login(server):
    with pytest.raises(Exception, match="login"):
        AmiTap(port=server.port, secret="nope", timeout=5)


def test_dict_matcher_needs_every_header():
    m = matcher({"Event": "DTMFEnd", "Digit": "1"})
    assert m({"Event": "DTMFEnd", "Digit": "1", "Direction": "Received"})
    assert not m({"Event": "DTMFEnd", "Digit": "2"})
    assert not m({"Event": "DTMFEnd"})


def test_sip_display_names_are_quoted_and_escaped():
    assert sip_quote('x" \\ y') == '"x\\" \\\\ y"'
    with pytest.raises(ValueError):
        sip_quote("a\r\nVia: evil")
