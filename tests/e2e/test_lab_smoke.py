"""The lab itself: phones register, Asterisk calls a phone, digits and hangups reach AMI.

Self-contained: the call is an AMI Originate into an application, so it does
not depend on the project's dialplan.
"""

import time
from pathlib import Path

import pytest

from ics import config, recorder
from tests.support import services

pytestmark = pytest.mark.e2e

NUMBER = "3125550109"   # a called-party phone the call-flow tests do not use


@pytest.fixture
def phone(phones):
    p = phones.phone(NUMBER)
    p.register(10)
    return p


def test_phone_registers_and_is_reachable(ami, phone):
    resp = ami.action("PJSIPShowEndpoint", Endpoint=NUMBER)
    assert resp["Response"] == "Success", resp
    contacts = [e for e in resp["_events"] if e.get("Event") == "ContactStatusDetail"]
    assert contacts, f"no contact for {NUMBER}: {resp['_events']}"
    assert f"127.0.0.1:{phone.local_port}" in contacts[0]["URI"]
    assert contacts[0]["Status"] in ("Reachable", "NonQualified")


def test_originated_call_carries_dtmf_and_hangup(ami, phone):
    mark = ami.mark()
    resp = ami.action("Originate", Channel=f"PJSIP/{NUMBER}", Application="Echo",
                      CallerID='"ICS lab" <100>', Timeout=10000, Async="true")
    assert resp["Response"] == "Success", resp
    call = phone.wait_incoming(10)
    assert "100" in call.remote_uri
    call.answer()
    call.wait_state("CONFIRMED", 5)
    call.wait_media("ACTIVE", 5)
    up = ami.wait_for({"Event": "Newstate", "ChannelStateDesc": "Up",
                       "Channel": lambda c: c.startswith(f"PJSIP/{NUMBER}-")}, 5, since=mark)
    channel = up["Channel"]
    time.sleep(0.3)   # let media settle before the first RTP event
    call.dtmf("1")
    end = ami.wait_for({"Event": "DTMFEnd", "Channel": channel, "Digit": "1", "Direction": "Received"},
                       5, since=mark)
    assert int(end["DurationMs"]) > 0
    call.wait_digits("1", 5)   # Echo sends it back
    call.hangup()
    call.wait_disconnected(5)
    hangup = ami.wait_for({"Event": "Hangup", "Channel": channel}, 5, since=mark)
    assert hangup["Cause"] in ("16", "0"), hangup


def _nice(pid: int) -> set[int]:
    """The niceness of every thread of a process (Linux nice is per thread)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.add(int(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[16]))
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return out


def test_the_services_off_the_media_path_yield_the_cpu_to_asterisk(stack):
    """ics-recorder and the listener run below Asterisk (README, Capacity): on a box short of
    CPU the calls' audio goes first. The recorder's file writer is lower still."""
    cfg = config.load()
    asterisk = services.pid("asterisk")
    assert services.alive(asterisk)
    base = _nice(asterisk)
    assert len(base) == 1, base
    base = base.pop()
    assert _nice(services.pid("ami")) == {base + cfg["ami"]["nice"]}
    recorder_nice = base + cfg["recordings"]["recorder_nice"]
    assert cfg["ami"]["nice"] > 0 and cfg["recordings"]["recorder_nice"] > 0
    threads = _nice(services.pid("recorder"))
    assert recorder_nice in threads
    assert threads <= {recorder_nice, min(19, recorder_nice + recorder.FINISHER_NICE)}
