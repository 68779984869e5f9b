"""The AMI listener process: watches every live inmate call and enforces the rules.

    ics-ami

Live-call state is keyed by Linkedid (the inmate channel's Uniqueid: the called
leg Dial creates inherits it). Events are dispatched by name to small handlers
that update that state; the decisions themselves are in ami.rules. When a rule
fires, the listener writes the reason, rule, threshold and evidence to the call
record, then redirects both legs to [ics-cut], where each hears why the call is
ending and is hung up (plain Hangup if a leg cannot be redirected). Time-limit
notices are played into the live call by a ChanSpy barge on a Local channel
([ics-notice]), so the bridge is never broken for them.

On every (re)connect the state of live calls is rebuilt from CoreShowChannels
and the call records, and enforcement goes on. Redis work runs in threads,
never in the event loop. The listener also settles a hung-up call whose hangup
handler did not (the FastAGI server was down), with the same code.

Its AMI user (ami.listener_user, dialplan/manager.conf.in) reads only the call
and dtmf classes, with an eventfilter for the events handled here.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import deque

import structlog

from ics import config as config_mod
from ics import logs, rating, records, settlement
from ics.livecalls import cut_redirect
from ics.rating import MINUTE_MS
from ics.store import Store, connect

from .connection import GuardedManager
from .rules import Cut, LiveCall, Policy, event_ms

log = structlog.get_logger("ami")

SETTLE_GRACE_S = 5.0   # the hangup handler normally settles within milliseconds
TICK_S = 0.2           # clock rules (hold grace, silence, time limit) are checked this often
CUT_PROMPT_MAX_S = 12  # a leg still up this long after the redirect is hung up outright
RESERVE_AHEAD_MS = 10_000  # the next minute is held this long before the paid ones run out
NOTICE_CONTEXT = "ics-notice"
CALL_EVENTS = ("Newchannel", "Hangup", "BridgeEnter", "BridgeLeave", "Hold", "Unhold", "Flash",
               "BlindTransfer", "AttendedTransfer", "ConfbridgeJoin", "DTMFEnd",
               "ChannelTalkingStart", "ChannelTalkingStop")


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
        self.bridges: dict[str, set[str]] = {}       # bridge id -> channels in it
        self.default_policy = Policy.from_facility(cfg["facility_defaults"])
        self.latencies_ms: deque[float] = deque(maxlen=10000)  # event received -> action sent
        self._tasks: set[asyncio.Task] = set()
        for name in CALL_EVENTS:
            manager.register_event(name, self.on_event)
        manager.login_hooks.append(self.rebuild)

    # --- dispatch ----------------------------------------------------------------
    def on_event(self, manager, event):
        received = time.perf_counter()
        name = event.get("Event", "")
        handler = getattr(self, f"on_{name.lower()}", None)
        cut_call = handler(event) if handler else None
        if cut_call is not None:
            self.spawn(self.enforce(cut_call, received))

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("ami.event_error", error=repr(exc), exc_info=(type(exc), exc, exc.__traceback__))

    def _call(self, event, create: bool = False) -> LiveCall | None:
        """The live call an event belongs to; only a Newchannel starts one (stray
        events of unknown calls must not leave state behind)."""
        linkedid = str(event.get("Linkedid") or event.get("Uniqueid") or "")
        call = self.calls.get(linkedid)
        if call is None:
            if not (create and linkedid):
                return None
            call = self.calls[linkedid] = LiveCall(linkedid, policy=self.default_policy)
        cid = chan_var(event, "ICS_CALL_ID")
        if cid and not call.call_id:
            call.call_id = cid
        return call

    @staticmethod
    def _observe(call: LiveCall | None, event) -> LiveCall | None:
        if call is not None and call.call_id and call.observe(event) is not None:
            return call
        return None

    # --- handlers (each returns the call to cut, if any) -------------------------
    def on_newchannel(self, event):
        chan = str(event.get("Channel", ""))
        known = str(event.get("Linkedid", "")) in self.calls
        call = self._call(event, create=True)
        if call is None:
            return None
        cut = self._observe(call, event) if known else None
        call.channels[chan] = str(event.get("Uniqueid", ""))
        if event.get("Uniqueid") == call.linkedid:
            call.inmate = chan
        return cut

    def on_bridgeenter(self, event):
        chan, bridge = str(event.get("Channel", "")), str(event.get("BridgeUniqueid", ""))
        if not (chan and bridge):
            return None
        members = self.bridges.setdefault(bridge, set())
        members.add(chan)
        # a channel of another call entering an inmate call's bridge is that call's business too
        for other in self.calls.values():
            if other.bridged and other.bridge == bridge and chan not in other.channels:
                return self._observe(other, event)
        call = self._call(event)
        if call is None:
            return None
        call.channels.setdefault(chan, str(event.get("Uniqueid", "")))
        if call.bridged:
            return self._observe(call, event)
        if call.call_id and call.inmate in members and len(members & set(call.channels)) >= 2:
            call.bridge = bridge
            call.start(event=event)
            log.info("enforce.watching", call_id=call.call_id, bridge=bridge,
                     technology=event.get("BridgeTechnology"))
            self.spawn(self.load(call))
        return None

    def on_bridgeleave(self, event):
        self._leave(str(event.get("Channel", "")), [str(event.get("BridgeUniqueid", ""))])
        return None

    def _leave(self, chan: str, bridges) -> None:
        for bridge in bridges:
            members = self.bridges.get(bridge)
            if members is not None:
                members.discard(chan)
                if not members:
                    del self.bridges[bridge]

    def on_blindtransfer(self, event):
        return self._transfer(event)

    def on_attendedtransfer(self, event):
        return self._transfer(event)

    def _transfer(self, event):
        # transfer events carry several channels of possibly different calls
        for call in list(self.calls.values()):
            if self._observe(call, event) is not None:
                return call
        return None

    def on_hangup(self, event):
        call = self.calls.get(str(event.get("Linkedid") or event.get("Uniqueid") or ""))
        if call is None:
            return None
        chan = str(event.get("Channel", ""))
        call.channels.pop(chan, None)
        call.talking.discard(chan)
        call.holds.pop(chan, None)
        self._leave(chan, [b for b, members in self.bridges.items() if chan in members])
        if chan == call.inmate and call.call_id:
            self.spawn(self.sweep(call.call_id, event_ms(event)))
        if not call.channels:
            self.calls.pop(call.linkedid, None)
        return None

    def _leg_event(self, event):
        return self._observe(self._call(event), event)

    on_hold = on_unhold = on_flash = on_confbridgejoin = on_dtmfend = _leg_event
    on_channeltalkingstart = on_channeltalkingstop = _leg_event

    # --- clock -------------------------------------------------------------------
    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for call in list(self.calls.values()):
                if not (call.call_id and call.bridged):
                    continue
                try:
                    cut, warnings = call.tick()
                except Exception:  # one call's bad state must not stop the clock for the others
                    log.exception("ami.event_error", call_id=call.call_id, where="tick")
                    continue
                if cut is not None:
                    self.spawn(self.enforce(call, time.perf_counter()))
                    continue
                for seconds in warnings:
                    self.spawn(self.notice(call, seconds))
                # no next minute for a call we cannot see (AMI lost: Asterisk may have dropped
                # it); if it lives on, Asterisk's TIMEOUT backstop ends it after the paid ones
                if call.extension_due(int(time.time() * 1000), RESERVE_AHEAD_MS) \
                        and self.manager.connected_event.is_set():
                    call.extending = True
                    self.spawn(self.extend(call))

    # --- actions -----------------------------------------------------------------
    async def load(self, call: LiveCall) -> None:
        """The call record and facility settings: bridge time, limit, rules."""
        try:
            rec = await asyncio.to_thread(records.get, self.store.r, call.call_id)
            facility = await asyncio.to_thread(self.store.facility, rec["facility"]) if rec else None
        except Exception as exc:  # Redis away: the defaults (every rule on) keep applying
            log.error("enforce.load_failed", call_id=call.call_id, error=repr(exc))
            return
        if rec is None:
            log.error("enforce.load_failed", call_id=call.call_id, error="no call record")
            return
        call.bridged_ms = int(rec.get("bridged_ms") or 0) or int(time.time() * 1000)
        call.limit_ms = int(rec.get("limit_s") or 0) * 1000
        call.account, call.rate_cents, call.tax_bps = rec.get("account", ""), rec.get("rate_cents", 0), \
            rec.get("tax_bps", 0)
        call.paid_ms = rec.get("paid_minutes", 0) * MINUTE_MS
        if facility is not None:
            call.policy = Policy.from_facility(facility)

    async def enforce(self, call: LiveCall, received: float) -> None:
        cut = call.cut
        assert cut is not None
        peers = [c for c in self.bridges.get(call.bridge, ()) if c != call.inmate and c in call.channels]
        legs = [c for c in [call.inmate, *(peers or call.other_legs())] if c]
        written = asyncio.get_running_loop().create_task(
            asyncio.to_thread(record_cut, self.store.r, call.call_id, cut))
        sent = self.manager.send_action({"Action": "Redirect", **cut_redirect(legs, cut.reason)})
        latency = (time.perf_counter() - received) * 1000
        self.latencies_ms.append(latency)
        log.warning("enforce.disconnect", call_id=call.call_id, reason=cut.reason, threshold=cut.threshold,
                    evidence=list(cut.events), latency_ms=round(latency, 3), legs=legs)
        try:
            await written
        except Exception as exc:
            log.error("enforce.record_failed", call_id=call.call_id, error=repr(exc))
        ok = await _succeeded(sent)
        if not ok:
            await self.hangup(call, legs)
            return
        await asyncio.sleep(CUT_PROMPT_MAX_S)
        await self.hangup(call, list(call.channels))

    async def extend(self, call: LiveCall) -> None:
        """Hold the next minute before it starts; if the account cannot, the call
        ends with its paid minutes (warned first), never overdrawn."""
        paid = call.paid_ms // MINUTE_MS
        amount = (rating.price(call.rate_cents, (paid + 1) * MINUTE_MS, call.tax_bps).cents
                  - rating.price(call.rate_cents, paid * MINUTE_MS, call.tax_bps).cents)
        try:
            outcome = await asyncio.to_thread(self.store.extend_hold, call.account, call.call_id, amount, paid)
            if outcome == "stale":  # another listener (before a restart) already held it
                rec = await asyncio.to_thread(records.get, self.store.r, call.call_id) or {}
                call.paid_ms = rec.get("paid_minutes", 0) * MINUTE_MS
        except Exception as exc:  # Redis away: fail closed, the call ends with what it paid
            log.error("enforce.hold_failed", call_id=call.call_id, error=repr(exc))
            outcome = "short"
        if outcome == "held":
            call.paid_ms = (paid + 1) * MINUTE_MS
            log.info("enforce.minute_held", call_id=call.call_id, paid_minutes=paid + 1, cents=amount)
            await self.push_timeout(call)
        elif outcome == "short":
            call.funds_ran_short()
            log.warning("enforce.funds_short", call_id=call.call_id, paid_minutes=paid,
                        ends_in_s=round((call.bridged_ms + call.paid_ms - time.time() * 1000) / 1000))
        call.extending = False

    async def push_timeout(self, call: LiveCall) -> None:
        """Move the called leg's TIMEOUT(absolute) backstop past the minute just held."""
        left_s = -(-(call.bridged_ms + call.paid_ms + rating.BACKSTOP_MS - int(time.time() * 1000)) // 1000)
        for leg in self.bridges.get(call.bridge, ()):
            if leg != call.inmate and leg in call.channels:
                await _succeeded(self.manager.send_action({"Action": "Setvar", "Channel": leg,
                                                           "Variable": "TIMEOUT(absolute)", "Value": left_s}))

    async def hangup(self, call: LiveCall, legs: list[str]) -> None:
        for leg in legs:
            if await _succeeded(self.manager.send_action({"Action": "Hangup", "Channel": leg, "Cause": 16})):
                log.info("enforce.hangup", call_id=call.call_id, channel=leg)

    async def notice(self, call: LiveCall, seconds: int) -> None:
        """'This call will end in N seconds', barged into both legs of the live call."""
        log.info("enforce.warning", call_id=call.call_id, seconds_left=seconds)
        ok = await _succeeded(self.manager.send_action({
            "Action": "Originate", "Channel": f"Local/{seconds}@{NOTICE_CONTEXT}/n",
            "Application": "ChanSpy", "Data": f"{call.inmate},qBES", "CallerID": "ICS notice",
            "Timeout": 5000, "Async": "true"}))
        if not ok:
            log.error("enforce.warning_failed", call_id=call.call_id, seconds_left=seconds)

    async def sweep(self, call_id: str, ended_ms: int | None = None) -> None:
        if ended_ms:  # the hang-up's own time: waiting below must not be billed (first writer wins)
            await asyncio.to_thread(records.mark_ended, self.store.r, call_id, ended_ms)
        await asyncio.sleep(SETTLE_GRACE_S)
        rec = await asyncio.to_thread(records.get, self.store.r, call_id)
        if rec is None or rec.get("settled") == "1":
            return
        log.warning("ami.settle_sweep", call_id=call_id, why="hangup handler did not settle")
        await asyncio.to_thread(settlement.settle, self.store, call_id)

    # --- (re)connect -----------------------------------------------------------------
    async def rebuild(self) -> None:
        """Live calls as Asterisk has them now, merged with what we knew before the gap."""
        try:
            listing = await self.manager.send_action({"Action": "CoreShowChannels"})
        except ConnectionError as exc:
            log.error("ami.rebuild_failed", error=repr(exc))
            return
        rows = [m for m in (listing if isinstance(listing, list) else [listing])
                if m.get("Event") == "CoreShowChannel"]
        seen: dict[str, LiveCall] = {}
        bridges: dict[str, set[str]] = {}
        for row in rows:
            call = seen.setdefault(str(row.get("Linkedid", "")), LiveCall(str(row.get("Linkedid", "")),
                                                                         policy=self.default_policy))
            chan = str(row.get("Channel", ""))
            call.channels[chan] = str(row.get("Uniqueid", ""))
            if row.get("Uniqueid") == call.linkedid:
                call.inmate = chan
                call.call_id = chan_var(row, "ICS_CALL_ID") or call.call_id
            if row.get("BridgeId"):
                bridges.setdefault(str(row["BridgeId"]), set()).add(chan)
                call.bridge = str(row["BridgeId"])
        gone = [c for k, c in self.calls.items() if k not in seen]
        for linkedid, fresh in seen.items():
            old = self.calls.get(linkedid)
            if old is not None and old.bridged:
                old.channels = fresh.channels
                continue
            self.calls[linkedid] = fresh
            both = fresh.inmate and len(bridges.get(fresh.bridge, set()) & set(fresh.channels)) >= 2
            if fresh.call_id and both:
                fresh.start()
                await self.load(fresh)
                fresh.skip_past_warnings(int(time.time() * 1000))
                log.info("enforce.watching", call_id=fresh.call_id, bridge=fresh.bridge, rebuilt=True)
        for call in gone:
            self.calls.pop(call.linkedid, None)
            if call.call_id:
                self.spawn(self.sweep(call.call_id))
        self.bridges = bridges
        # calls that ended while nobody settled them (FastAGI and listener both down)
        for call_id in await asyncio.to_thread(orphans, self.store.r, set(seen)):
            self.spawn(self.sweep(call_id))
        log.info("ami.rebuilt", channels=len(rows), calls=len(seen),
                 watching=sum(1 for c in self.calls.values() if c.bridged and c.call_id))


ORPHAN_SCAN = 500       # most recent call records looked at after a (re)connect
ORPHAN_MIN_AGE_MS = 10_000


def orphans(r, live_linkedids: set[str]) -> list[str]:
    """Recent unsettled calls whose inmate channel is no longer on Asterisk."""
    now = int(time.time() * 1000)
    return [rec["call_id"] for rec in records.recent(r, ORPHAN_SCAN)
            if rec.get("settled") != "1" and rec.get("uniqueid") not in live_linkedids
            and now - rec.get("started_ms", now) > ORPHAN_MIN_AGE_MS]


def record_cut(r, call_id: str, cut: Cut) -> None:
    records.record_cut(r, call_id, cut.reason, cut.threshold, cut.at_ms, cut.events)


async def _succeeded(pending) -> bool:
    try:
        reply = await pending
    except Exception as exc:  # connection lost: never re-sent (ami.connection)
        log.error("ami.action_failed", error=repr(exc))
        return False
    return str(getattr(reply, "get", lambda *_: "")("Response", "")).lower() == "success"


def build(cfg: config_mod.Config, loop: asyncio.AbstractEventLoop) -> tuple[GuardedManager, Listener]:
    a = cfg["ami"]
    manager = GuardedManager(host=a["host"], port=a["port"], username=a["listener_user"], secret=a["secret"],
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
    manager, listener = build(cfg, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("service.start", service="ami", host=cfg["ami"]["host"], port=cfg["ami"]["port"])
    manager.connect()
    ticker = loop.create_task(listener.ticker())
    loop.run_until_complete(stop.wait())
    ticker.cancel()
    manager.close()
    log.info("service.stop", service="ami")
    return 0


if __name__ == "__main__":
    sys.exit(main())
