"""Admission control (issue 9): a new inmate call is refused with the busy prompt and
capacity_full once capacity.max_calls calls are live, instead of degrading every call.

The decision (ics.capacity, one Lua script) and the flow against a real Redis; the count
as the AMI listener's heartbeat publishes it, from a scripted AMI stream.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import structlog
import structlog.testing

from ami import listener as listener_mod
from ics import capacity, keys, records
from tests.unit.test_flows_scripted import (INMATE, PIN, ScriptedAsterisk, decision, env_block, fastagi,
                                            listener_up, make_world, serve_fastagi)
from tests.unit.conftest import client
from tests.unit.test_listener_replay import until, wired  # noqa: F401 (fixture)

BUSY = 'STREAM FILE "ics/prompts/all-lines-busy"'


# --- the decision ------------------------------------------------------------------

def test_no_count_is_unknown_not_room(store):
    """The listener away: no count. The flow's listener check then refuses (fail closed)."""
    load = capacity.check(store.r, 5, admit="1.1")
    assert load.room is None
    assert not store.r.exists(keys.CALLS_SETTING_UP), "nothing admitted without a count"


def test_room_until_live_plus_setting_up_reaches_max(store):
    store.r.set(keys.LIVE_CALLS, 3)
    assert capacity.check(store.r, 5) == capacity.Load(True, 3, 0)     # a look admits nothing
    assert capacity.check(store.r, 5, admit="1.1") == capacity.Load(True, 3, 0)
    assert capacity.check(store.r, 5) == capacity.Load(True, 3, 1)     # 4 of 5
    assert capacity.check(store.r, 5, admit="2.1").room is True        # the 5th
    assert capacity.check(store.r, 5, admit="3.1") == capacity.Load(False, 3, 2)
    assert capacity.setting_up(store.r).keys() == {"1.1", "2.1"}
    # a call asking again (a retry) does not count against itself
    assert capacity.check(store.r, 5, admit="2.1").room is True
    store.r.set(keys.LIVE_CALLS, 5)
    assert capacity.check(store.r, 5).room is False
    assert capacity.check(store.r, 5, admit="4.1").room is False


def test_old_setting_up_entries_stop_counting(store):
    store.r.set(keys.LIVE_CALLS, 0)
    old = capacity.now_ms() - capacity.SETTING_UP_MAX_MS - 1
    store.r.zadd(keys.CALLS_SETTING_UP, {"gone.1": old})
    assert capacity.check(store.r, 1, admit="1.1").room is True
    assert list(capacity.setting_up(store.r)) == ["1.1"]


def test_simultaneous_admissions_never_overshoot(store):
    """The check and the admission are one step: 20 flows asking at once for the last 3 lines."""
    store.r.set(keys.LIVE_CALLS, 7)
    results: list[bool] = []
    start = threading.Barrier(20)

    def ask(i: int) -> None:
        start.wait()
        results.append(capacity.check(store.r, 10, admit=f"{i}.1").room)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results.count(True) == 3 and results.count(False) == 17


def test_the_beat_counts_each_call_once_and_drops_gone_ones(store):
    now = capacity.now_ms()
    store.r.set(keys.LIVE_CALLS, 0)
    store.r.zadd(keys.CALLS_SETTING_UP, {"placed.1": now - 500, "dialing.1": now - 500,
                                         "hungup.1": now - 5000, "unseen.1": now - 100})
    admitted = capacity.setting_up(store.r)
    capacity.beat(store.r, live={"placed.1", "older.1"}, known={"placed.1", "older.1", "dialing.1"},
                  admitted=admitted, now=now)
    assert store.r.get(keys.LIVE_CALLS) == "2" and store.r.get(keys.LISTENER_ALIVE) == str(now)
    for key in (keys.LIVE_CALLS, keys.LISTENER_ALIVE):  # the heartbeat's expiry, both
        assert 0 < store.r.pttl(key) <= keys.LISTENER_ALIVE_MS
    # counted live now: no longer setting up; the channel gone: dropped; the rest still count
    assert capacity.setting_up(store.r).keys() == {"dialing.1", "unseen.1"}
    assert capacity.check(store.r, 4).room is False and capacity.check(store.r, 5).room is True


def test_status_for_icsctl(store):
    assert capacity.status(store.r) == {"listener_alive": False, "heartbeat_age_ms": None,
                                        "live_calls": None, "setting_up": 0}
    capacity.beat(store.r, live={"a"}, known={"a"}, admitted={})
    capacity.check(store.r, 10, admit="b")
    st = capacity.status(store.r)
    assert st["listener_alive"] and st["live_calls"] == 1 and st["setting_up"] == 1
    assert 0 <= st["heartbeat_age_ms"] < 1000


# --- the inmate flow -----------------------------------------------------------------

@pytest.fixture
def small(redis_url, tmp_path):
    """A world whose FastAGI server admits at most 2 calls; yields (cfg, store, port)."""
    cfg, store = make_world(redis_url, tmp_path)
    cfg.values["capacity"]["max_calls"] = 2
    gen = serve_fastagi((cfg, store))
    port = next(gen)
    yield cfg, store, port
    next(gen, None)


def test_full_refuses_before_the_pin_with_the_busy_prompt(small):
    cfg, store, port = small
    listener_up(store, live_calls=2)
    with structlog.testing.capture_logs() as logged:
        cmds = fastagi(port, ScriptedAsterisk(), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"'
    assert any(c.startswith(BUSY) for c in cmds)
    assert not any(c.startswith("GET DATA") for c in cmds), "no PIN asked for: the lines are busy"
    assert not any("ICS_DIAL" in c for c in cmds)
    rec = records.recent(store.r, 1)[0]
    assert (rec["reason"], rec["outcome"]) == ("capacity_full", "refused")
    assert store.account("fam1").held_cents == 0 and not capacity.setting_up(store.r)
    full = [e for e in logged if e["event"] == "call.capacity_full"]
    assert full and full[0]["live"] == 2 and full[0]["max_calls"] == 2 and full[0]["at"] == "start"


def test_a_call_is_admitted_right_before_it_dials(small):
    cfg, store, port = small
    listener_up(store, live_calls=1)
    cmds = fastagi(port, ScriptedAsterisk(), env_block("inmate"))  # env_block: agi_uniqueid 1.1
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "dial"'
    assert list(capacity.setting_up(store.r)) == ["1.1"]  # counted until the listener sees it placed
    # the next call finds both lines taken (1 live, 1 setting up)
    cmds = fastagi(port, ScriptedAsterisk(), env_block("inmate").replace(b"1.1", b"2.1"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"' and any(c.startswith(BUSY) for c in cmds)
    assert records.recent(store.r, 1)[0]["reason"] == "capacity_full"


class FillsDuringPin(ScriptedAsterisk):
    """The lines fill up while the inmate keys in the PIN (other calls placed meanwhile)."""

    def __init__(self, store, live_calls):
        super().__init__()
        self.store, self.live_calls = store, live_calls

    def reply(self, cmd: str) -> bytes:
        if cmd.startswith("GET DATA") and "enter-pin" in cmd:
            if self.live_calls is None:
                self.store.r.delete(keys.LIVE_CALLS)
            else:
                self.store.r.set(keys.LIVE_CALLS, self.live_calls)
        return super().reply(cmd)


def test_full_by_the_dial_refuses_then_releases_the_hold(small):
    cfg, store, port = small
    listener_up(store, live_calls=0)
    with structlog.testing.capture_logs() as logged:
        cmds = fastagi(port, FillsDuringPin(store, 2), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"'
    assert any(c.startswith(BUSY) for c in cmds) and not any("ICS_DIAL" in c for c in cmds)
    rec = records.recent(store.r, 1)[0]
    assert (rec["reason"], rec["inmate"]) == ("capacity_full", INMATE)
    assert [e["at"] for e in logged if e["event"] == "call.capacity_full"] == ["dial"]
    assert not capacity.setting_up(store.r)
    # the first minute was held by then: the hangup handler's settlement gives it back
    assert store.account("fam1").held_cents > 0
    fastagi(port, ScriptedAsterisk(), env_block("settle", [rec["call_id"], "", ""]))
    rec = records.recent(store.r, 1)[0]
    assert rec["reason"] == "capacity_full" and rec["billed_cents"] == 0
    assert store.account("fam1").held_cents == 0 and store.account("fam1").balance_cents == 500


def test_the_count_gone_by_the_dial_fails_closed(small):
    """The listener's heartbeat (and count) expired while the inmate keyed in: not placed."""
    cfg, store, port = small
    listener_up(store, live_calls=0)
    cmds = fastagi(port, FillsDuringPin(store, None), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"'
    assert records.recent(store.r, 1)[0]["reason"] == "system_unavailable"
    assert not any("ICS_DIAL" in c for c in cmds)


def test_listener_down_is_still_system_unavailable_after_the_pin(small):
    """No heartbeat and no count: the busy check cannot tell, the listener check refuses."""
    cfg, store, port = small
    store.r.delete(keys.LISTENER_ALIVE, keys.LIVE_CALLS)
    cmds = fastagi(port, ScriptedAsterisk(), env_block("inmate"))
    assert decision(cmds) == 'SET VARIABLE "ICS_RESULT" "refused"'
    assert any(c.startswith("GET DATA") and "enter-pin" in c for c in cmds)
    rec = records.recent(store.r, 1)[0]
    assert rec["reason"] == "system_unavailable" and rec["inmate"] == INMATE


def test_redis_away_at_the_check_goes_to_the_fail_context(small, monkeypatch):
    cfg, store, port = small
    listener_up(store)

    def away(*a, **k):
        raise ConnectionError("redis away")
    monkeypatch.setattr(capacity, "check", away)
    cmds = fastagi(port, ScriptedAsterisk(), env_block("inmate"))
    assert cmds[-3:] == ['SET CONTEXT "ics-fail"', 'SET EXTENSION "s"', 'SET PRIORITY "1"']
    assert not any("ICS_DIAL" in c for c in cmds)


# --- the listener's count --------------------------------------------------------------

INMATE_CHAN, CALLED_CHAN = "PJSIP/inmate1-00000001", "PJSIP/3125550100-00000002"
CALL_ID = "20261129000000-0000cafe"


def newchannel(chan: str, uniqueid: str, linkedid: str, call_id: str = "") -> str:
    var = f"ChanVariable: ICS_CALL_ID={call_id}\n" if call_id else ""
    return f"Event: Newchannel\nChannel: {chan}\nUniqueid: {uniqueid}\nLinkedid: {linkedid}\n{var}\n"


async def test_the_heartbeat_publishes_the_live_inmate_calls(wired, store):  # noqa: F811
    fake, listener = wired
    assert await until(lambda: listener.rebuilt)
    # a call the flow admitted (no call id on AMI yet), ringing: counted once its called leg exists
    store.r.zadd(keys.CALLS_SETTING_UP, {"10.1": capacity.now_ms()})
    fake.send(newchannel(INMATE_CHAN, "10.1", "10.1"))
    # a call in the inmate's menu (PIN): not counted
    fake.send(newchannel("PJSIP/inmate2-00000003", "11.1", "11.1"))
    # a time-limit notice's Local channel pair (two channels, no inmate call): not counted
    fake.send(newchannel("Local/30@ics-notice-00000001;1", "12.1", "12.1"))
    fake.send(newchannel("Local/30@ics-notice-00000001;2", "12.2", "12.1"))
    # a call known by its call id (e.g. after a listener restart), with its called leg
    fake.send(newchannel("PJSIP/inmate3-00000004", "13.1", "13.1", CALL_ID))
    fake.send(newchannel("PJSIP/3125550101-00000005", "13.2", "13.1"))
    assert await until(lambda: "13.1" in listener.calls and len(listener.calls["12.1"].channels) == 2)
    beat = asyncio.get_running_loop().create_task(listener.heartbeat())
    try:
        assert await until(lambda: store.r.get(keys.LIVE_CALLS) == "1")
        assert store.r.exists(keys.LISTENER_ALIVE)
        assert 0 < store.r.pttl(keys.LIVE_CALLS) <= keys.LISTENER_ALIVE_MS
        assert capacity.check(store.r, 2).calls == 2  # 13.1 live, 10.1 setting up
        fake.send(newchannel(CALLED_CHAN, "10.2", "10.1"))
        assert await until(lambda: store.r.get(keys.LIVE_CALLS) == "2")
        assert not capacity.setting_up(store.r), "counted live, no longer setting up (never twice)"
        assert listener.live_calls() == {"10.1", "13.1"}
        # the called leg hangs up: the inmate's channel alone (after-dial, settlement) is not a live call
        fake.send(f"Event: Hangup\nChannel: {CALLED_CHAN}\nUniqueid: 10.2\nLinkedid: 10.1\n\n")
        assert await until(lambda: store.r.get(keys.LIVE_CALLS) == "1")
    finally:
        beat.cancel()


async def test_no_heartbeat_nor_count_until_the_live_calls_are_rebuilt(wired, store):  # noqa: F811
    fake, listener = wired
    assert await until(lambda: listener.rebuilt)
    listener.rebuilt = False  # as after AMI was lost, until the next rebuild
    beat = asyncio.get_running_loop().create_task(listener.heartbeat())
    try:
        await asyncio.sleep(listener_mod.HEARTBEAT_S * 1.5)
        assert not store.r.exists(keys.LISTENER_ALIVE) and not store.r.exists(keys.LIVE_CALLS)
    finally:
        beat.cancel()


# --- what ops read -------------------------------------------------------------------

def test_icsctl_status_shows_live_calls_against_max_calls(redis_url, tmp_path, monkeypatch, capsys):
    from ics import cli
    monkeypatch.delenv("ICS_CONFIG", raising=False)
    monkeypatch.setenv("ICS_REDIS_URL", redis_url)
    monkeypatch.setenv("ICS_SOUNDS_DIR", str(tmp_path))
    monkeypatch.setenv("ICS_LOG_FORMAT", "json")
    monkeypatch.setenv("ICS_CAPACITY_MAX_CALLS", "3")
    r = client(redis_url)
    try:
        def run(*argv):
            capsys.readouterr()
            rc = cli.main(list(argv))
            cap = capsys.readouterr()
            return rc, cap.out, cap.err

        rc, out, err = run("status")
        assert rc == 1 and "listener: DOWN" in out and "calls: ? live / 3 max_calls" in out
        assert "listener is down" in err
        capacity.beat(r, live={"a", "b"}, known={"a", "b"}, admitted={})
        rc, out, _ = run("status")
        assert rc == 0 and "listener: up" in out and "calls: 2 live / 3 max_calls, 0 being placed" in out
        assert "FULL" not in out
        capacity.check(r, 3, admit="c")
        rc, out, _ = run("status", "--json")
        doc = json.loads(out)
        assert rc == 0 and (doc["live_calls"], doc["setting_up"], doc["max_calls"], doc["full"]) == (2, 1, 3, True)
        rc, out, _ = run("status")
        assert "FULL: new calls hear the busy prompt (capacity_full)" in out
    finally:
        r.close()
        structlog.reset_defaults()
