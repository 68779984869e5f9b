"""The listener against a replayed AMI transcript (scripted AMI socket, real Redis).

A malformed and out-of-order stream must not crash or confuse it; the call it
carries is still enforced afterwards, with the evidence on its record.
"""

import asyncio
import json

import pytest
import structlog.testing

from ami.connection import GuardedManager
from ami.listener import Listener
from ics import records
from tests.unit.test_ami_connection import FakeAMI

INMATE, CALLED = "PJSIP/inmate1-00000001", "PJSIP/3125550100-00000002"
CALL_ID = "20261122000000-0000abcd"

NOISE = """Event: Hangup
this line has no colon

Event: Hangup
Uniqueid: 99.9
Linkedid: 99.9
Channel: PJSIP/ghost-00000009

Event: BridgeEnter
BridgeUniqueid: b-unknown

Event: DTMFEnd
Digit: 5

Event: AttendedTransfer
Result: Fail

Event: ChannelTalkingStop
Channel: PJSIP/ghost-00000009
Linkedid: 77.7
Duration: not-a-number

"""

CALL = f"""Event: Newchannel
Channel: {INMATE}
Uniqueid: 10.1
Linkedid: 10.1
ChanVariable: ICS_CALL_ID={CALL_ID}

Event: Newchannel
Channel: {CALLED}
Uniqueid: 10.2
Linkedid: 10.1

Event: BridgeEnter
Channel: {INMATE}
Uniqueid: 10.1
Linkedid: 10.1
BridgeUniqueid: b1
BridgeNumChannels: many
ChanVariable: ICS_CALL_ID={CALL_ID}

Event: Unhold
Channel: {CALLED}
Linkedid: 10.1

Event: BridgeEnter
Channel: {CALLED}
Uniqueid: 10.2
Linkedid: 10.1
BridgeUniqueid: b1
BridgeNumChannels: 2
BridgeTechnology: simple_bridge

"""

FLASH = f"""Event: Flash
Channel: {CALLED}
Uniqueid: 10.2
Linkedid: 10.1
Timestamp: 1795378273.310983

"""


@pytest.fixture
async def wired(store):
    fake = FakeAMI()
    fake.answer_all = True
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mgr = GuardedManager(host="127.0.0.1", port=port, username="u", secret="s",
                         loop=asyncio.get_running_loop(), reconnect_timeout=0.1,
                         ping_interval_s=5, ping_timeout_s=3)
    listener = Listener(store.cfg, store, mgr)
    mgr.connect()
    await asyncio.wait_for(mgr.connected_event.wait(), 3)
    yield fake, listener
    mgr.close()
    mgr.connection_lost = lambda exc: None
    fake.drop()
    server.close()
    await server.wait_closed()


async def until(pred, timeout=3.0):
    for _ in range(int(timeout / 0.02)):
        if pred():
            return True
        await asyncio.sleep(0.02)
    return pred()


async def test_malformed_and_out_of_order_events_then_a_flash_is_still_enforced(wired, store):
    fake, listener = wired
    with structlog.testing.capture_logs() as logged:
        await _noise_then_a_flash(fake, listener, store)
    # no event handler failed on the noise: nothing logged at error level, no exception attached
    failed = [e for e in logged if e.get("log_level") in ("error", "critical") or e.get("exc_info")]
    assert not failed, failed
    assert any(e["event"] == "enforce.disconnect" for e in logged)  # the capture sees the listener's log


async def _noise_then_a_flash(fake, listener, store):
    store.create_facility("main", "Main")
    records.create(store.r, CALL_ID, facility="main", number="3125550100", bridged_ms=1, limit_s=900)
    fake.send(NOISE)
    fake.send(CALL)
    assert await until(lambda: listener.calls.get("10.1") and listener.calls["10.1"].bridged)
    fake.send(FLASH)
    assert await until(lambda: any(a.get("Action") == "Redirect" for a in fake.actions))
    redirect = next(a for a in fake.actions if a.get("Action") == "Redirect")
    assert (redirect["Channel"], redirect["ExtraChannel"]) == (INMATE, CALLED)
    assert redirect["Context"] == "ics-cut" and redirect["Exten"] == "hook_flash"
    assert await until(lambda: (records.get(store.r, CALL_ID) or {}).get("rule") == "hook_flash")
    rec = records.get(store.r, CALL_ID)
    assert rec["reason"] == "hook_flash" and rec["rule_threshold"] == "rule_hook_flash=on"
    assert json.loads(rec["evidence"]) == [{"event": "Flash", "time": "1795378273.310983", "channel": CALLED}]


async def test_the_ghost_and_the_hung_up_are_forgotten(wired, store):
    fake, listener = wired
    store.create_facility("main", "Main")
    records.create(store.r, CALL_ID, facility="main", number="3125550100")
    fake.send(NOISE)
    fake.send(CALL)
    assert await until(lambda: "10.1" in listener.calls)
    fake.send(f"Event: Hangup\nChannel: {CALLED}\nUniqueid: 10.2\nLinkedid: 10.1\n\n"
              f"Event: Hangup\nChannel: {INMATE}\nUniqueid: 10.1\nLinkedid: 10.1\n\n"
              f"Event: Hangup\nChannel: {INMATE}\nUniqueid: 10.1\nLinkedid: 10.1\n\n")
    assert await until(lambda: not listener.calls)
    assert not listener.bridges  # nothing of the ghost, the call or its bridge is kept


@pytest.mark.parametrize("settled_as, final", [(None, "transfer"), ("called_hangup", "transfer"),
                                               ("inmate_hangup", "transfer"), ("lockdown_ended", "lockdown_ended")])
def test_a_rules_reason_wins_over_a_plain_hangup_written_first(store, settled_as, final):
    from ami.listener import record_cut
    from ami.rules import Cut
    records.create(store.r, CALL_ID, facility="main", number="3125550100")
    if settled_as:
        records.set_reason(store.r, CALL_ID, settled_as)
    record_cut(store.r, CALL_ID, Cut("transfer", "rule_transfer=on", ({"event": "BlindTransfer"},), 5))
    rec = records.get(store.r, CALL_ID)
    assert (rec["reason"], rec["rule"], rec["cut_ms"]) == (final, "transfer", 5)


def test_a_cut_recorded_after_the_call_ended_is_dated_no_later_than_the_end(store):
    from ami.listener import record_cut
    from ami.rules import Cut
    records.create(store.r, CALL_ID, facility="main", number="3125550100")
    records.mark_ended(store.r, CALL_ID, 1_000)
    record_cut(store.r, CALL_ID, Cut("transfer", "rule_transfer=on", ({"event": "BlindTransfer"},), 1_001))
    assert records.get(store.r, CALL_ID)["cut_ms"] == 1_000


def test_a_call_ended_after_a_later_dated_cut_was_written_clamps_the_cut_to_the_end(store):
    """The other order: the listener wrote its cut (its clock) and Asterisk's earlier-stamped end
    arrives after it (a transfer hangs a leg up itself): the cut still lies no later than the end."""
    from ami.listener import record_cut
    from ami.rules import Cut
    records.create(store.r, CALL_ID, facility="main", number="3125550100")
    record_cut(store.r, CALL_ID, Cut("transfer", "rule_transfer=on", ({"event": "BlindTransfer"},), 1_002))
    records.mark_ended(store.r, CALL_ID, 1_000)
    records.mark_ended(store.r, CALL_ID, 900)  # a duplicate hang-up moves nothing
    rec = records.get(store.r, CALL_ID)
    assert (rec["ended_ms"], rec["cut_ms"]) == (1_000, 1_000)


def test_a_hang_up_of_a_call_with_no_record_creates_none(store):
    """The listener's sweep dates a hang-up before it settles: on a call whose record is gone (or
    never was) that must not leave a record of ended_ms alone, which settlement would then take
    for a call (reason inmate_abandoned, on no account)."""
    from ics import settlement
    records.mark_ended(store.r, CALL_ID, 1_000)
    assert records.get(store.r, CALL_ID) is None
    with pytest.raises(LookupError):
        settlement.settle(store, CALL_ID)
