"""Faults before the bridge (issue 8 items 1, 5, 6), without Asterisk.

The pure decisions of ami.rules before the bridge, the before_accept setting,
the called-party flow against a scripted Asterisk (the inmate channel gone
between prompts or just before the bridge; the recording notice always in
full), and the listener's wiring against a replayed AMI stream.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from ami.rules import LiveCall, Noted, Policy
from ics import config, keys, records
from ics.store import Store, connect

from .test_listener_replay import until, wired  # noqa: F401 (fixture)
from .test_flows_billing import CalledParty
from .test_cli import run, sounds  # noqa: F401
from .test_flows_scripted import INMATE, NUMBER, PIN, serve_fastagi, env_block, fastagi

INMATE_CHAN, CALLED = "PJSIP/inmate1-00000001", "PJSIP/3125550100-00000002"


# --- rules: pure decisions ------------------------------------------------------------------

def unbridged(**policy) -> LiveCall:
    return LiveCall("1.1", call_id="c1", inmate=INMATE_CHAN, channels={INMATE_CHAN: "1.1", CALLED: "1.2"},
                    policy=Policy(**policy))


def ev(name, chan=CALLED, **headers):
    return {"Event": name, "Channel": chan, "Timestamp": "1795378273.310983", **headers}


@pytest.mark.parametrize("name, reason", [("Flash", "hook_flash"), ("Hold", "hold")])
def test_a_flash_or_hold_before_the_bridge_ends_the_call_by_default(name, reason):
    cut = unbridged().before_accept(ev(name))
    assert (cut.reason, cut.threshold) == (reason, "before_accept=end")
    assert cut.events[0]["event"] == name and cut.events[0]["channel"] == CALLED
    assert cut.at_ms == 1795378273310  # dated by the event


def test_a_transfer_touching_a_leg_before_the_bridge_ends_the_call():
    call = unbridged()
    assert call.before_accept({"Event": "BlindTransfer", "TransfererChannel": "PJSIP/other-1",
                               "Timestamp": "1.0"}) is None  # another call's business
    cut = call.before_accept({"Event": "BlindTransfer", "TransfererChannel": CALLED, "Result": "Invalid",
                              "Extension": "3125550101", "Timestamp": "1.0"})
    assert cut.reason == "transfer" and cut.events[0]["TransfererChannel"] == CALLED


def test_record_only_or_a_rule_off_notes_and_never_cuts():
    noted = unbridged(before_accept="record").before_accept(ev("Flash"))
    assert isinstance(noted, Noted) and noted.reason == "hook_flash" and noted.events[0]["event"] == "Flash"
    assert isinstance(unbridged(hook_flash=False).before_accept(ev("Flash")), Noted)
    call = unbridged(before_accept="record")
    call.before_accept(ev("Hold"))
    assert call.cut is None


def test_before_accept_ignores_other_events_other_calls_and_bridged_calls():
    call = unbridged()
    assert call.before_accept(ev("DTMFEnd", Digit="1")) is None  # a menu key
    assert call.before_accept(ev("Unhold")) is None
    assert call.before_accept(ev("Flash", chan="PJSIP/other-00000009")) is None
    call.start(now=0.0)
    assert call.before_accept(ev("Flash")) is None  # the bridged rules (observe) apply instead


def test_the_inmate_leaving_before_the_bridge_is_noticed_only_for_the_inmate_channel():
    call = unbridged()
    assert not call.inmate_left_before_bridge(ev("HangupRequest", chan=CALLED))
    assert call.inmate_left_before_bridge(ev("HangupRequest", chan=INMATE_CHAN))
    assert not call.inmate_left_before_bridge(ev("SoftHangupRequest", chan=INMATE_CHAN))  # once only
    assert unbridged().inmate_left_before_bridge(ev("SoftHangupRequest", chan=INMATE_CHAN))
    call = unbridged()
    ringing_only = LiveCall("1.1", call_id="c1", inmate=INMATE_CHAN, channels={INMATE_CHAN: "1.1"})
    assert not ringing_only.inmate_left_before_bridge(ev("HangupRequest", chan=INMATE_CHAN))
    call.start(now=0.0)
    assert not call.inmate_left_before_bridge(ev("HangupRequest", chan=INMATE_CHAN))


def test_before_accept_setting_is_validated_and_defaults_to_end():
    assert config.DEFAULTS["facility_defaults"]["before_accept"] == "end"
    assert Policy.from_facility(config.load(environ={})["facility_defaults"]).before_accept == "end"
    with pytest.raises(config.ConfigError, match="before_accept"):
        config.load(environ={"ICS_FACILITY_DEFAULTS_BEFORE_ACCEPT": "maybe"})


# --- the called-party flow against a scripted Asterisk ----------------------------------------

class Caller(CalledParty):
    """The called phone, and an inmate channel that hangs up once `gone_after` has played."""

    def __init__(self, presses=(), gone_after: str | None = None):
        super().__init__(presses)
        self.gone_after = gone_after
        self.gone = False

    def reply(self, cmd: str) -> bytes:
        if cmd.startswith('GET FULL VARIABLE "${CHANNEL(hangupsource)}"'):
            return f"200 result=1 ({INMATE_CHAN if self.gone else ''})\n".encode()
        if self.gone_after and cmd.startswith("STREAM FILE") and self.gone_after in cmd:
            self.gone = True
        return super().reply(cmd)


@pytest.fixture
def world(redis_url, tmp_path):
    # the scripted Asterisk answers an EXEC (MixMonitor) but has no RTP for ics-recorder
    cfg = config.load(environ={"ICS_REDIS_URL": redis_url, "ICS_SOUNDS_DIR": str(tmp_path),
                               "ICS_RECORDINGS_METHOD": "mixmonitor"})
    store = Store(connect(cfg), cfg)
    store.create_facility("main", "Test Jail", type="jail", adp=200, rate_cents_per_min=11)
    store.create_inmate(INMATE, "main", "Alex", PIN)
    store.approve_number(INMATE, NUMBER)
    store.create_account("fam1", "Sam", [NUMBER])
    store.adjust("fam1", "deposit", 500)
    return cfg, store


@pytest.fixture
def port(world):
    yield from serve_fastagi(world)


def placed(port, store) -> str:
    cmds = fastagi(port, Caller(), env_block("inmate", extension=NUMBER))
    return [c for c in cmds if '"ICS_CALL_ID"' in c][0].split('"')[3]


def callee(port, call_id, script):
    return fastagi(port, script, env_block("callee", [call_id]))


def streams(cmds, fragment):
    return [c for c in cmds if c.startswith("STREAM FILE") and fragment in c]


def test_inmate_gone_between_prompts_tells_the_called_party_and_never_bridges(port, world):
    cfg, store = world
    call_id = placed(port, store)
    cmds = callee(port, call_id, Caller(gone_after="announce-at"))
    assert streams(cmds, "cut-inmate_hangup_before_accept")
    assert not streams(cmds, "menu-accept")  # the next prompt was not started
    assert 'SET VARIABLE "GOSUB_RESULT" ""' not in cmds
    rec = records.get(store.r, call_id)
    assert rec["reason"] == "inmate_hangup_before_accept" and "bridged_ms" not in rec


def test_accept_after_the_inmate_left_is_caught_by_the_last_check_before_the_bridge(port, world):
    cfg, store = world
    call_id = placed(port, store)
    # the key comes first; the inmate leaves while "Connecting" plays
    cmds = callee(port, call_id, Caller(presses=[("announce-from", "1")], gone_after="prompts/connecting"))
    assert streams(cmds, "prompts/connecting")
    assert 'SET VARIABLE "GOSUB_RESULT" ""' not in cmds
    assert not any(c.startswith('EXEC "MixMonitor"') for c in cmds)  # nothing recorded
    rec = records.get(store.r, call_id)
    assert rec["reason"] == "inmate_hangup_before_accept" and "bridged_ms" not in rec


def test_accept_at_the_first_word_plays_the_whole_notice_then_connects(port, world):
    cfg, store = world
    call_id = placed(port, store)
    cmds = callee(port, call_id, Caller(presses=[("announce-from", "1")]))
    notice = streams(cmds, "announce-recorded")
    assert notice == ['STREAM FILE "ics/prompts/announce-recorded" "" "0"']  # no key can cut it
    assert cmds.index(notice[0]) < cmds.index(streams(cmds, "prompts/connecting")[0])
    assert 'SET VARIABLE "GOSUB_RESULT" ""' in cmds


def test_a_key_during_the_notice_is_the_choice_and_the_notice_plays_on_from_there(port, world):
    cfg, store = world
    call_id = placed(port, store)
    cmds = callee(port, call_id, Caller(presses=[("announce-recorded", "1")]))
    notice = streams(cmds, "announce-recorded")
    assert notice == ['STREAM FILE "ics/prompts/announce-recorded" "123908" "0"',  # the menu keys (info 0) and the language switch (8)
                      'STREAM FILE "ics/prompts/announce-recorded" "" "800"']  # on from endpos, once
    assert not streams(cmds, "menu-accept") and 'SET VARIABLE "GOSUB_RESULT" ""' in cmds


def test_refuse_during_the_notice_is_not_held_up_by_it(port, world):
    cfg, store = world
    call_id = placed(port, store)
    cmds = callee(port, call_id, Caller(presses=[("announce-recorded", "2")]))
    assert streams(cmds, "announce-recorded") == ['STREAM FILE "ics/prompts/announce-recorded" "123908" "0"']
    assert streams(cmds, "prompts/refused") and records.get(store.r, call_id)["reason"] == "refused"


def test_quote_during_the_notice_then_accept_plays_the_whole_notice_again(port, world):
    cfg, store = world
    call_id = placed(port, store)
    cmds = callee(port, call_id, Caller(presses=[("announce-recorded", "3"), ("menu-accept", "1")]))
    assert streams(cmds, "announce-recorded")[-1] == 'STREAM FILE "ics/prompts/announce-recorded" "" "0"'
    assert cmds.index(streams(cmds, "announce-recorded")[-1]) > cmds.index(streams(cmds, "rate-is")[0])
    assert 'SET VARIABLE "GOSUB_RESULT" ""' in cmds


def test_a_privileged_call_never_hears_the_notice(port, world):
    cfg, store = world
    call_id = placed(port, store)
    records.update(store.r, call_id, privileged="1")
    store.r.hdel(keys.call(call_id), "recording")
    cmds = callee(port, call_id, Caller(presses=[("announce-from", "1")]))
    assert not streams(cmds, "announce-recorded") and 'SET VARIABLE "GOSUB_RESULT" ""' in cmds


# --- the listener's wiring ------------------------------------------------------------------

INMATE_UP = f"""Event: Newchannel
Channel: {INMATE_CHAN}
Uniqueid: 10.1
Linkedid: 10.1
ChanVariable: ICS_CALL_ID={{cid}}

Event: Newchannel
Channel: {CALLED}
Uniqueid: 10.2
Linkedid: 10.1

"""


CID = "20261122000000-0000abcd"


@pytest.mark.parametrize("outcome, rule, redirected", [
    ("announcing", None, True), ("accepted", None, True),
    ("dialing", None, False),                # still ringing: Dial itself sees the caller go
    ("announcing", "lockdown_ended", False),  # a deliberate cut already sends both legs
])
async def test_listener_sends_the_called_leg_to_ics_cut_when_the_inmate_leaves_before_the_bridge(
        wired, store, outcome, rule, redirected):
    fake, listener = wired
    store.create_facility("main", "Main")
    records.create(store.r, CID, facility="main", number="3125550100", outcome=outcome, rule=rule)
    fake.send(INMATE_UP.replace("{cid}", CID))
    assert await until(lambda: CALLED in getattr(listener.calls.get("10.1"), "channels", {}))
    fake.send(f"Event: HangupRequest\nChannel: {INMATE_CHAN}\nUniqueid: 10.1\nLinkedid: 10.1\n"
              f"Cause: 16\nTimestamp: 1795378273.310983\n\n")
    got = await until(lambda: any(a.get("Action") == "Redirect" for a in fake.actions), 1.0 if redirected else 0.5)
    assert got == redirected
    if redirected:
        redirect = next(a for a in fake.actions if a.get("Action") == "Redirect")
        assert (redirect["Channel"], redirect["Context"], redirect["Exten"]) == \
            (CALLED, "ics-cut", "inmate_hangup_before_accept")
        assert "ExtraChannel" not in redirect  # the inmate's leg is already going
        assert records.get(store.r, CID)["reason"] == "inmate_hangup_before_accept"
        # Asterisk follows with a SoftHangupRequest: the called leg is not sent again
        fake.send(f"Event: SoftHangupRequest\nChannel: {INMATE_CHAN}\nUniqueid: 10.1\nLinkedid: 10.1\n"
                  f"Cause: 16\nTimestamp: 1795378273.320000\n\n")
        await asyncio.sleep(0.3)
        assert sum(1 for a in fake.actions if a.get("Action") == "Redirect") == 1


async def test_listener_cuts_a_flash_before_the_bridge_and_records_it(wired, store):
    fake, listener = wired
    store.create_facility("main", "Main")
    records.create(store.r, CID, facility="main", number="3125550100", outcome="announcing")
    fake.send(INMATE_UP.replace("{cid}", CID))
    assert await until(lambda: CALLED in getattr(listener.calls.get("10.1"), "channels", {}))
    fake.send(f"Event: Flash\nChannel: {CALLED}\nUniqueid: 10.2\nLinkedid: 10.1\nTimestamp: 1795378273.310983\n\n")
    assert await until(lambda: any(a.get("Action") == "Redirect" for a in fake.actions))
    redirect = next(a for a in fake.actions if a.get("Action") == "Redirect")
    assert (redirect["Channel"], redirect["ExtraChannel"], redirect["Exten"]) == (INMATE_CHAN, CALLED, "hook_flash")
    assert await until(lambda: (records.get(store.r, CID) or {}).get("rule") == "hook_flash")
    rec = records.get(store.r, CID)
    assert rec["reason"] == "hook_flash" and rec["rule_threshold"] == "before_accept=end"
    assert json.loads(rec["evidence"])[0]["event"] == "Flash"


async def test_listener_only_records_a_flash_when_the_facility_says_record(wired, store):
    fake, listener = wired
    store.create_facility("main", "Main", before_accept="record")
    records.create(store.r, CID, facility="main", number="3125550100", outcome="announcing")
    fake.send(INMATE_UP.replace("{cid}", CID))
    assert await until(lambda: listener.calls.get("10.1") is not None
                       and listener.calls["10.1"].policy.before_accept == "record")
    fake.send(f"Event: Flash\nChannel: {CALLED}\nUniqueid: 10.2\nLinkedid: 10.1\nTimestamp: 1795378273.310983\n\n")
    assert await until(lambda: (records.get(store.r, CID) or {}).get("before_accept"))
    noted = json.loads(records.get(store.r, CID)["before_accept"])
    assert noted == [{"reason": "hook_flash", "events": [{"event": "Flash", "time": "1795378273.310983",
                                                          "channel": CALLED}]}]
    assert not any(a.get("Action") == "Redirect" for a in fake.actions)
    assert "reason" not in records.get(store.r, CID)


# --- icsctl -------------------------------------------------------------------------------

def test_icsctl_sets_and_shows_before_accept(run, store):
    status, _, _ = run("facility", "create", "main", "--name", "Main", "--no-audio")
    assert status == 0
    status, out, _ = run("facility", "show", "main")
    assert "flash, hold, transfer end the call  (default)" in out
    status, _, _ = run("facility", "create", "rec", "--name", "Rec", "--no-audio", "--before-accept", "record")
    assert status == 0 and store.facility("rec")["before_accept"] == "record"
    status, out, _ = run("facility", "show", "rec")
    assert "flash, hold, transfer only recorded  (facility)" in out
    status, _, err = run("facility", "create", "bad", "--name", "Bad", "--no-audio", "--before-accept", "maybe")
    assert status == 1 and "before_accept" in err and "bad" not in store.facilities()
