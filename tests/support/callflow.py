"""Steps of a collect call as the phones perform them, for the end-to-end tests and the demo.

Digits are sent only once the AGI command that reads them is running (AMI
AGIExecStart, then a short pause): res_agi drops DTMF that arrives between
commands.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ics import audio, config, records
from ics.store import Store, connect
from tests.support import admin_redis

FACILITY = "main"  # the inmate phones' ICS_FACILITY (dialplan/pjsip.conf.in)
INMATE = "123456"
PIN = "4321"
NUMBER = "3125550100"
OTHER_NUMBER = "3125550101"
DTMF_SETTLE_S = 0.4


@dataclass
class World:
    store: Store
    cfg: config.Config
    account: str = "fam1"


def make_world(balance_cents: int = 500, **facility) -> World:
    cfg = config.load()
    store = Store(connect(cfg), cfg)  # as icsctl's Redis user, as an operator sets a facility up
    with admin_redis() as admin:
        admin.flushdb()
    # a jail of ADP 100-349: FCC 25-75 caps its rates at 13 cents/min (the e2e tests use 11 and 13)
    settings = dict(menu_timeout_s=2, rate_cents_per_min=11, time_limit_s=900, type="jail", adp=200)
    settings.update(facility)
    store.create_facility(FACILITY, "Demo County Jail", **settings)
    store.create_inmate(INMATE, FACILITY, "Alex Doe", PIN)
    store.approve_number(INMATE, NUMBER)
    store.create_account("fam1", "Sam Doe", [NUMBER])
    if balance_cents:
        store.adjust("fam1", "deposit", balance_cents, "test deposit")
    # the inmate's name, as ops would import it (the first-use recording has its own test)
    audio.speak("Alex Doe", cfg.sounds_dir / "names" / f"{INMATE}.wav")
    audio.speak("Demo County Jail", cfg.sounds_dir / "facilities" / f"{FACILITY}.wav")
    store.set_name_recorded(INMATE)
    return World(store, cfg)


def agi_command(fragment: str, channel_prefix: str | None = None):
    def match(e):
        return (e.get("Event") == "AGIExecStart" and fragment in e.get("Command", "")
                and (channel_prefix is None or e.get("Channel", "").startswith(channel_prefix)))
    return match


def press_when(ami, call, fragment: str, digits: str, mark, timeout: float = 20, channel_prefix=None):
    """Wait until the AGI command containing fragment runs, then send digits."""
    ami.wait_for(agi_command(fragment, channel_prefix), timeout, since=mark)
    time.sleep(DTMF_SETTLE_S)
    call.dtmf(digits)


def login(ami, call, mark, inmate: str = INMATE, pin: str = PIN):
    press_when(ami, call, "enter-inmate-id", inmate + "#", mark)
    m2 = ami.mark()
    press_when(ami, call, "enter-pin", pin + "#", m2)


def answered(ami, lines, **facility):
    """A call placed and answered; returns (world, inmate call, called call, mark)."""
    inmate, family, _ = lines
    world = make_world(balance_cents=500, **facility)
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.answer()
    return world, call, callee, mark


def latest_call(world: World) -> dict:
    recs = records.recent(world.store.r, 1)
    assert recs, "no call record was written"
    return recs[0]


def wait_settled(world: World, timeout: float = 15, *, call_id: str | None = None) -> dict:
    """The call record once settled: call_id's, or the newest call's."""
    def current() -> dict:
        if call_id is not None:
            return records.get(world.store.r, call_id) or {}
        recs = records.recent(world.store.r, 1)
        return recs[0] if recs else {}

    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = current()
        if rec.get("settled") == "1":
            return rec
        time.sleep(0.1)
    raise AssertionError(f"call {call_id or '(newest)'} not settled within {timeout}s: {current()}")


def balance(world: World) -> int:
    return world.store.account(world.account).balance_cents


def sounds_dir() -> Path:
    return Path(os.environ.get("ICS_SOUNDS_DIR", config.load().sounds_dir))
