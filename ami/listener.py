"""The AMI listener process: watches every inmate call from AMI.

    ics-ami

This issue's part is the plumbing: a guarded connection (ami.connection),
live-call state keyed by Linkedid, and the settlement safety net: when an
inmate channel hangs up and its hangup handler did not settle the call (the
FastAGI server was down or died mid-call), the listener settles it with the
same code. Disconnect rules come on top of this state (a later issue).

Needs `channelvars = ICS_CALL_ID` in manager.conf so events carry the call id.
Blocking work (Redis) runs in a thread, never in the event loop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field

import structlog

from ics import config as config_mod
from ics import logs, records, settlement
from ics.store import Store, connect

from .connection import GuardedManager

log = structlog.get_logger("ami")

SETTLE_GRACE_S = 5.0  # the hangup handler normally settles within milliseconds


@dataclass
class LiveCall:
    linkedid: str
    call_id: str = ""
    channels: set[str] = field(default_factory=set)
    bridge: str = ""


def chan_var(event, name: str) -> str:
    """ChanVariable headers arrive as 'NAME=value' (one or several)."""
    raw = event.get("ChanVariable", "")
    values = raw if isinstance(raw, list) else [raw]
    for item in values:
        key, _, value = str(item).partition("=")
        if key == name:
            return value
    return ""


class Listener:
    def __init__(self, cfg: config_mod.Config, store: Store, manager: GuardedManager):
        self.cfg = cfg
        self.store = store
        self.manager = manager
        self.calls: dict[str, LiveCall] = {}
        for name in ("Newchannel", "BridgeEnter", "BridgeLeave", "Hangup"):
            manager.register_event(name, getattr(self, f"on_{name.lower()}"))

    def _call(self, event) -> LiveCall:
        linkedid = event.get("Linkedid") or event.get("Uniqueid", "")
        call = self.calls.setdefault(linkedid, LiveCall(linkedid))
        cid = chan_var(event, "ICS_CALL_ID")
        if cid and not call.call_id:
            call.call_id = cid
        return call

    def on_newchannel(self, manager, event):
        self._call(event).channels.add(event.get("Channel", ""))

    def on_bridgeenter(self, manager, event):
        call = self._call(event)
        call.channels.add(event.get("Channel", ""))
        call.bridge = event.get("BridgeUniqueid", "")

    def on_bridgeleave(self, manager, event):
        self._call(event)

    def on_hangup(self, manager, event):
        call = self._call(event)
        call.channels.discard(event.get("Channel", ""))
        if event.get("Uniqueid") == call.linkedid and call.call_id:
            # the inmate channel (the call's first channel) is gone
            asyncio.get_running_loop().create_task(self.sweep(call.call_id))
        if not call.channels:
            self.calls.pop(call.linkedid, None)

    async def sweep(self, call_id: str) -> None:
        await asyncio.sleep(SETTLE_GRACE_S)
        rec = await asyncio.to_thread(records.get, self.store.r, call_id)
        if rec is None or rec.get("settled") == "1":
            return
        log.warning("ami.settle_sweep", call_id=call_id, why="hangup handler did not settle")
        await asyncio.to_thread(settlement.settle, self.store, call_id)


def build(cfg: config_mod.Config, loop: asyncio.AbstractEventLoop) -> tuple[GuardedManager, Listener]:
    a = cfg["ami"]
    manager = GuardedManager(host=a["host"], port=a["port"], username=a["user"], secret=a["secret"],
                             ping_interval_s=a["ping_interval_s"], ping_timeout_s=a["ping_timeout_s"],
                             loop=loop, reconnect_timeout=1)
    return manager, Listener(cfg, Store(connect(cfg), cfg), manager)


def main() -> int:
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        logs.setup()
        log.error("service.config_error", error=str(exc))
        return 2
    logs.setup(cfg["log"]["format"], cfg["log"]["level"])
    if not cfg["ami"]["secret"]:
        log.error("service.config_error", error="ami.secret is empty (set ICS_AMI_SECRET)")
        return 2
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    manager, _ = build(cfg, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("service.start", service="ami", host=cfg["ami"]["host"], port=cfg["ami"]["port"])
    manager.connect()
    loop.run_until_complete(stop.wait())
    manager.close()
    log.info("service.stop", service="ami")
    return 0


if __name__ == "__main__":
    sys.exit(main())
