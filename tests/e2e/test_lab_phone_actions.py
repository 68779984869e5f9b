"""The phone harness's in-call actions on real Asterisk, as AMI reports them.

Self-contained: calls are AMI Originates (phone A answers, then Dial rings
phone B), so these tests do not depend on the project's dialplan, only on
pjsip.conf (called-party phones in context ics-outside, transfers allowed)
and, for the blind transfer, on ics-outside hanging up what is dialled.
"""

import time

import pytest

pytestmark = pytest.mark.e2e

A, B, C = "3125550108", "3125550109", "3125550107"


def chan(number):
    return lambda c: c.startswith(f"PJSIP/{number}-")


@pytest.fixture
def abc(phones):
    out = []
    for n in (A, B, C):
        p = phones.phone(n)
        p.register(10)
        p.drain_incoming()
        out.append(p)
    return out


def bridge(ami, a, b, mark):
    """Originate to phone a, which Dials phone b; both answer; returns (leg_a, leg_b)."""
    ami.action("Originate", Channel=f"PJSIP/{a.user}", Application="Dial",
               Data=f"PJSIP/{b.user},20", CallerID=f'"lab" <{a.user}>', Timeout=10000, Async="true")
    leg_a = a.wait_incoming(10)
    leg_a.answer()
    leg_b = b.wait_incoming(10)
    leg_b.answer()
    leg_b.wait_state("CONFIRMED", 5)
    ami.wait_for({"Event": "BridgeEnter", "Channel": chan(b.user)}, 5, since=mark)
    time.sleep(0.5)   # media up on both legs
    return leg_a, leg_b


def test_dtmf_hold_unhold_and_flashes_in_a_bridge(ami, abc):
    a, b, _ = abc
    mark = ami.mark()
    leg_a, leg_b = bridge(ami, a, b, mark)

    leg_b.dtmf("5")
    ami.wait_for({"Event": "DTMFEnd", "Channel": chan(B), "Digit": "5", "Direction": "Received"}, 5, since=mark)
    leg_a.wait_digits("5", 5)   # relayed to the peer

    leg_b.hold()
    ami.wait_for({"Event": "Hold", "Channel": chan(B)}, 5, since=mark)
    leg_b.unhold()
    ami.wait_for({"Event": "Unhold", "Channel": chan(B)}, 5, since=mark)

    m = ami.mark()
    leg_b.flash_info()
    ami.wait_for({"Event": "Flash", "Channel": chan(B)}, 5, since=m)
    time.sleep(0.3)
    m = ami.mark()
    leg_b.flash_rfc2833()
    ami.wait_for({"Event": "Flash", "Channel": chan(B)}, 5, since=m)

    leg_a.hangup()
    leg_b.wait_disconnected(5)
    leg_a.wait_disconnected(5)


def test_blind_transfer_is_reported(ami, abc):
    a, b, _ = abc
    mark = ami.mark()
    leg_a, leg_b = bridge(ami, a, b, mark)
    leg_b.blind_transfer(C)
    ev = ami.wait_for({"Event": "BlindTransfer"}, 5, since=mark)
    assert ev["Extension"] == C and ev["Context"] == "ics-outside"
    assert ev["TransfererChannel"].startswith(f"PJSIP/{B}-")
    # ics-outside hangs up whatever is dialled: the transferee is gone and the
    # transferer hears the REFER's final NOTIFY (not 2xx: nothing answered)
    code = leg_b.wait_transfer_final(10)
    assert code >= 200, leg_b.transfer_status
    leg_a.wait_disconnected(10)
    leg_b.hangup()
    leg_b.wait_disconnected(10)


def test_attended_transfer_is_reported(ami, abc):
    a, b, c = abc
    mark = ami.mark()
    leg_a1, leg_b = bridge(ami, a, b, mark)   # a <-> b
    m2 = ami.mark()
    leg_a2, leg_c = bridge(ami, a, c, m2)     # a <-> c, a second call on phone a
    leg_a1.hold()
    ami.wait_for({"Event": "Hold", "Channel": chan(A)}, 5, since=m2)
    leg_a1.attended_transfer(leg_a2)
    ev = ami.wait_for({"Event": "AttendedTransfer"}, 10, since=mark)
    assert ev["Result"] == "Success", ev
    leg_a1.wait_disconnected(10)
    leg_a2.wait_disconnected(10)
    # b and c now talk to each other
    assert leg_b.state == "CONFIRMED" and leg_c.state == "CONFIRMED"
    leg_b.hangup()
    leg_c.wait_disconnected(10)
