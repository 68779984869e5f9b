"""The lab itself: phones register, Asterisk calls a phone, digits and hangups reach AMI.

Self-contained: the call is an AMI Originate into an application, so it does
not depend on the project's dialplan.
"""

import time

import pytest

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
