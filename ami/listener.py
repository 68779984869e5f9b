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
handler did not (the FastAGI server was down), with the same code. A hang-up it
cannot settle (Redis down) is kept with its AMI event time and retried until
settled; ended calls nobody saw end are looked for periodically, not only on a
reconnect. Calls Asterisk itself dropped (a stop or restart: SoftHangupRequest
with the shutdown cause, or a new CoreStartupTime after AMI was lost) are
recorded as system_error with that evidence before they are settled, and so is a
call whose called-party menu ended abnormally (ICS_FAULT on a leg's Hangup).
Its heartbeat says calls are watched and how many inmate calls are live, which
the inmate flow admits new calls against (capacity.max_calls, ics.capacity).

Its AMI user (ami.listener_user, dialplan/manager.conf.in) reads only the call
and dtmf classes, with an eventfilter for the events handled here. Metrics and
/health (Redis answers, AMI logged in): ics.metrics, on ami.metrics_port.

In a cluster each node runs its own listener against its own Asterisk (node.id): it
enforces, counts and sweeps only the calls whose record names its node, so no call is
enforced twice, and it settles the calls of a peer node that died whole (ami.peers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import structlog

from ics import config as config_mod
from ics import capacity, keys, logs, metrics, prompts, rating, recordings, records, settlement
from ics.livecalls import cut_redirect
from ics.rating import MINUTE_MS
from ics.store import Store, connect

from . import peers
from .audiotap import Tap, TapServer
from .connection import GuardedManager
from .rules import Cut, LiveCall, Noted, Policy, event_ms, evidence, for_call, rules_off
from .tones import Detection

log = structlog.get_logger("ami")

HEARTBEAT_S = 1.0       # keys.LISTENER_ALIVE and keys.LIVE_CALLS are refreshed this often (they live
                        # keys.LISTENER_ALIVE_MS)
SETTLE_GRACE_S = 5.0   # the hangup handler normally settles within milliseconds
TICK_S = 0.2           # clock rules (hold grace, silence, time limit) are checked this often
CUT_PROMPT_MAX_S = 12  # a leg still up this long after the redirect is hung up outright
COURTESY_END_MAX_S = 25  # ... longer after a courtesy call: how to open a prepaid account, and the number
RESERVE_AHEAD_MS = 10_000  # the next minute is held this long before the paid ones run out
NOTICE_CONTEXT = "ics-notice"
WARN_EXTEN = "threeway"   # [ics-notice] exten of the three-way warning (a rule's "warn" response)
CALL_EVENTS = ("Newchannel", "Hangup", "BridgeEnter", "BridgeLeave", "Hold", "Unhold", "Flash",
               "BlindTransfer", "AttendedTransfer", "ConfbridgeJoin", "DTMFEnd",
               "ChannelTalkingStart", "ChannelTalkingStop", "HangupRequest", "SoftHangupRequest", "ICSTone")
INMATE_LEFT = "inmate_hangup_before_accept"   # reason, and the [ics-cut] exten the called leg hears
PRE_BRIDGE_OUTCOMES = ("announcing", "accepted")  # the called leg is in the announcement / menu gosub
# Asterisk going down (issue 8: system drops): SoftHangupRequest says why a channel is being
# hung up (Cause is Asterisk's softhangup flag, 4 = the whole system is shutting down),
# Shutdown is sent just before AMI closes on a stop or restart
SYSTEM_EVENTS = ("Shutdown",)  # SoftHangupRequest is a call event (above)
SOFTHANGUP_SHUTDOWN = "4"    # AST_SOFTHANGUP_SHUTDOWN
SHUTDOWN_WAIT_S = 2.0        # a dropped call's record waits this long for the Shutdown event's evidence


class StartupUnknown(Exception):
    """After a reconnect, Asterisk's start time could not be read (the connection went again)."""


@dataclass
class Unsettled:
    """A hang-up the listener could not settle yet (Redis away): retried until settled."""
    ended_ms: int | None
    since: float = field(default_factory=time.monotonic)
    attempts: int = 0
    drop: tuple | None = None   # (threshold, evidence, bridge confirmed) of a system drop to record first
    hung_up: tuple[str, str] = ("", "")   # (the channel whose hang-up came first, the inmate's channel)


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
        self.node = cfg["node"]["id"]
        self.calls: dict[str, LiveCall] = {}
        self.bridges: dict[str, set[str]] = {}       # bridge id -> channels in it
        self.default_policy = Policy.from_facility(cfg["facility_defaults"])
        self.latencies_ms: deque[float] = deque(maxlen=10000)  # event received -> action sent
        self._tasks: set[asyncio.Task] = set()
        self.tap = TapServer(cfg["ami"]["tap_host"], cfg["ami"]["tap_port"])
        self.detect_latencies_ms: deque[int] = deque(maxlen=10000)  # signature onset -> action sent
        for name in CALL_EVENTS:
            manager.register_event(name, self.on_event)
        manager.login_hooks.append(self.rebuild)
        self.init_fault_paths()

    # --- dispatch ----------------------------------------------------------------
    def on_event(self, manager, event):
        received = time.perf_counter()
        metrics.AMI_EVENTS.inc()
        stamped = event_ms(event)
        if stamped:  # how far behind Asterisk the listener reads (its backlog)
            metrics.AMI_LAG.observe(max(0.0, time.time() - stamped / 1000))
        name = event.get("Event", "")
        handler = getattr(self, f"on_{name.lower()}", None)
        cut_call = handler(event) if handler else None
        if cut_call is not None:
            self.spawn(self.enforce(cut_call, received))

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        metrics.AMI_PENDING.set(len(self._tasks))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        metrics.AMI_PENDING.set(len(self._tasks))
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
            self.spawn(self.load_policy(call))  # the facility's rules apply before the bridge too
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
            if not call.bridged and self._before_accept(call, event) is not None:
                return call
            if self._observe(call, event) is not None:
                return call
        return None

    def on_hangup(self, event):
        call = self.calls.get(str(event.get("Linkedid") or event.get("Uniqueid") or ""))
        if call is None:
            return None
        self.drop_cause(call, event)
        self.note_ending(call, event)
        chan = str(event.get("Channel", ""))
        call.channels.pop(chan, None)
        call.talking.discard(chan)
        call.holds.pop(chan, None)
        self._leave(chan, [b for b, members in self.bridges.items() if chan in members])
        fault = chan_var(event, "ICS_FAULT")
        if fault and call.call_id:
            # the called-party menu ended abnormally ([ics-callee] sets ICS_FAULT on both legs):
            # a system drop, dated by the first leg's Hangup (the called one, hung up at once)
            if call.call_id not in self.dropped:
                self.dropped.add(call.call_id)
                at_ms = event_ms(event) or int(time.time() * 1000)
                self.spawn(self.system_drop(call.call_id, at_ms, settlement.fault_threshold(fault),
                                            [settlement.fault_evidence(fault, at_ms, chan), evidence(event)]))
        elif chan == call.inmate and call.call_id:
            self.spawn(self.sweep(call.call_id, event_ms(event), (self.ending_by.get(call.linkedid, ""), chan)))
        if not call.channels:
            self.calls.pop(call.linkedid, None)
        return None

    def _leg_event(self, event):
        call = self._call(event)
        if call is not None and not call.bridged and self._before_accept(call, event) is not None:
            return call
        return self._observe(call, event)

    on_hold = on_unhold = on_flash = on_confbridgejoin = on_dtmfend = _leg_event
    on_channeltalkingstart = on_channeltalkingstop = _leg_event

    # --- before the bridge (announcement, menu: the called leg is in Dial's U() gosub) ----
    def _before_accept(self, call: LiveCall, event) -> LiveCall | None:
        """A flash, hold or transfer before the bridge: the call to cut, or a note to record."""
        if not call.call_id:
            return None
        decided = call.before_accept(event)
        if isinstance(decided, Noted):
            log.warning("enforce.before_accept_noted", call_id=call.call_id, reason=decided.reason,
                        evidence=list(decided.events))
            self.spawn(asyncio.to_thread(records.note_before_accept, self.store.r, call.call_id,
                                         decided.reason, decided.events))
            return None
        return call if decided is not None else None

    def on_hanguprequest(self, event):
        call = self._call(event)
        if call is not None and call.call_id:
            self.note_ending(call, event)
        if call is not None and call.call_id and call.inmate_left_before_bridge(event):
            self.spawn(self.release_called(call, event, time.perf_counter()))
        return None

    async def load_policy(self, call: LiveCall) -> None:
        """The facility's settings as soon as the call id is known (the bridge reloads them)."""
        try:
            rec = await asyncio.to_thread(records.get, self.store.r, call.call_id)
            facility = await asyncio.to_thread(self.store.facility, rec["facility"]) if rec else None
        except Exception as exc:  # Redis away: the defaults keep applying
            log.error("enforce.load_failed", call_id=call.call_id, error=repr(exc), where="before_accept")
            return
        if facility is not None and not call.bridged:
            call.policy = for_call(Policy.from_facility(facility), rec)

    async def release_called(self, call: LiveCall, event, received: float) -> None:
        """The inmate hung up while the called party hears the announcement or menu. Asterisk
        would notice only when the gosub returns (the whole menu later): send the called leg to
        [ics-cut] now, where it hears that the caller hung up and is released. Not while the
        phone still rings (Dial itself sees the caller go) nor once bridged."""
        try:
            rec = await asyncio.to_thread(records.get, self.store.r, call.call_id) or {}
        except Exception as exc:  # Redis away: the call flow's own check ends the leg
            log.error("enforce.release_failed", call_id=call.call_id, error=repr(exc))
            return
        legs = call.other_legs()
        if (rec.get("bridged_ms") or rec.get("outcome") not in PRE_BRIDGE_OUTCOMES or not legs
                or rec.get("rule")):  # a deliberate cut (rule, lockdown, cut-off) already sends the legs
            return
        await asyncio.to_thread(records.set_reason, self.store.r, call.call_id, INMATE_LEFT)
        sent = self.manager.send_action({"Action": "Redirect", **cut_redirect(legs, INMATE_LEFT)})
        if event_ms(event):
            metrics.ENFORCEMENT.labels(INMATE_LEFT).observe(max(0.0, time.time() - event_ms(event) / 1000))
        ok = await _succeeded(sent)
        log.warning("enforce.inmate_left", call_id=call.call_id, legs=legs, redirected=ok,
                    evidence=evidence(event), latency_ms=round((time.perf_counter() - received) * 1000, 3))
        if not ok:
            await self.hangup(call, legs)

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
        call.language = rec.get("called_language") or call.language
        call.courtesy = rec.get("line") == "courtesy"
        if facility is not None:
            call.policy = for_call(Policy.from_facility(facility), rec)
        call.info = {k: str(rec.get(k, "")) for k in ("facility", "inmate", "number")}
        off = rules_off(rec)  # a relay or TTY call: its audio rules off whatever its number says
        if off:
            log.info("enforce.rules_off", call_id=call.call_id, rules=sorted(off), why=rec.get("rules_off_why"))
        try:
            call.overrides, why = await asyncio.to_thread(rules_overrides, self.store.r, call.call_id,
                                                          call.info["number"])
            call.overrides.update({rule: "off" for rule in off})
            why = "; ".join(w for w in (why, rec.get("rules_off_why", "") if off else "") if w)
            await asyncio.to_thread(records.update, self.store.r, call.call_id,
                                    responses=_json(call.effective()), responses_why=why or None)
        except Exception as exc:  # Redis away: the facility's responses apply
            log.error("enforce.load_failed", call_id=call.call_id, error=repr(exc), where="responses")
            call.overrides.update({rule: "off" for rule in off})
        # an attorney's call is never recorded or monitored, by a machine either: no tap, no tone rule
        if call.bridged and call.tap_id is None and self.cfg["ami"]["tap"] and rec.get("privileged") != "1":
            call.tap_id = ""  # once
            self.spawn(self.start_watch(call) if self.cfg["ami"]["detector"] == "module" else self.start_tap(call))

    async def enforce(self, call: LiveCall, received: float, onset_ms: int | None = None) -> None:
        """Act on every rule that fired on the call, each by its response."""
        while call.fired:
            fired = call.fired.popleft()
            fired = dataclasses.replace(fired, acted_ms=int(time.time() * 1000))
            if onset_ms is not None:  # a signature in the audio: how long from its onset to the action
                self.detect_latencies_ms.append(fired.acted_ms - onset_ms)
            if fired.response == "disconnect":
                await self.disconnect(call, fired, received)
            else:
                await self.respond(call, fired, received)

    async def respond(self, call: LiveCall, fired: Cut, received: float) -> None:
        """warn: both parties hear the three-way warning (barged in, the bridge untouched);
        flag: nothing is heard. Either way the record and the investigators' alert stream get
        the rule and its evidence, and the call goes on."""
        if fired.response == "warn":
            self.spawn(self.barge(call, WARN_EXTEN))
        try:
            await asyncio.to_thread(note_fired, self.store.r, call.call_id, fired, call.info)
        except Exception as exc:
            log.error("enforce.record_failed", call_id=call.call_id, error=repr(exc))
        log.warning(f"enforce.{fired.response}", call_id=call.call_id, reason=fired.reason,
                    threshold=fired.threshold, evidence=list(fired.events),
                    latency_ms=round((time.perf_counter() - received) * 1000, 3))

    async def disconnect(self, call: LiveCall, cut: Cut, received: float) -> None:
        peers = [c for c in self.bridges.get(call.bridge, ()) if c != call.inmate and c in call.channels]
        legs = [c for c in [call.inmate, *(peers or call.other_legs())] if c]
        written = asyncio.get_running_loop().create_task(
            asyncio.to_thread(record_cut, self.store.r, call.call_id, cut, call.info))
        sent = self.manager.send_action({"Action": "Redirect", **cut_redirect(legs, cut.reason)})
        # from the time Asterisk stamped on the event that broke the rule (a clock rule: its deadline)
        metrics.ENFORCEMENT.labels(cut.reason).observe(max(0.0, time.time() - cut.at_ms / 1000))
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
        await asyncio.sleep(CUT_PROMPT_MAX_S + (COURTESY_END_MAX_S if call.courtesy else 0))
        await self.hangup(call, list(call.channels))

    # --- the called leg's audio (res_ics_tonewatch, or ami.audiotap and ami.tones) -----------
    async def start_watch(self, call: LiveCall) -> None:
        """ICS_TONEWATCH on the called leg: Asterisk's res_ics_tonewatch (asterisk/) detects the
        signatures in that channel's own thread and raises an ICSTone event for each (on_icstone)."""
        called = [c for c in self.bridges.get(call.bridge, ()) if c != call.inmate and c in call.channels]
        if not called:
            return
        t = call.policy.tones
        settings = " ".join(f"{f.name}={getattr(t, f.name)}" for f in dataclasses.fields(t))
        call.tap_id = called[0]
        ok = await _succeeded(self.manager.send_action({
            "Action": "Setvar", "Channel": called[0], "Variable": "ICS_TONEWATCH(set)", "Value": settings}))
        if not ok:
            log.error("tap.failed", call_id=call.call_id, channel=called[0], detector="module")
        else:
            log.info("tap.started", call_id=call.call_id, channel=called[0], detector="module")

    def on_icstone(self, event):
        call = self.calls.get(str(event.get("Linkedid", "")))
        if call is None or not call.call_id:
            return None
        det = Detection(str(event.get("Signature", "")), int(event.get("OnsetMs", 0)), int(event.get("DurationMs", 0)),
                        float(event.get("LevelDbfs", 0)), str(event.get("Detail", "")))
        self.detected(call, det, int(event.get("StartedMs", 0)))
        return None

    async def start_tap(self, call: LiveCall) -> None:
        """ChanSpy (listen only, the called side's audio) on the called leg, run by an AudioSocket
        channel that streams what it is given to the listener (ami.audiotap)."""
        called = [c for c in self.bridges.get(call.bridge, ()) if c != call.inmate and c in call.channels]
        if not called:
            return
        call.tap_id = self.tap.expect(call.linkedid, call.policy.tones, self.on_detect)
        ok = await _succeeded(self.manager.send_action({
            "Action": "Originate", "Channel": f"AudioSocket/{self.tap.address}/{call.tap_id}/c(slin)",
            "Application": "ChanSpy", "Data": f"{called[0]},qoES", "CallerID": "ICS tap",
            "Timeout": 5000, "Async": "true"}))
        if not ok:
            self.tap.drop(call.tap_id)
            log.error("tap.failed", call_id=call.call_id, channel=called[0])
        else:
            log.info("tap.started", call_id=call.call_id, channel=called[0], tap=call.tap_id)

    def on_detect(self, tap: Tap, det: Detection) -> None:
        call = self.calls.get(tap.key)
        if call is not None and call.call_id:
            self.detected(call, det, tap.started_ms)

    def detected(self, call: LiveCall, det: Detection, started_ms: int) -> None:
        """A signature in the called leg's audio; started_ms: epoch ms of the first audio the
        detector saw (its offsets count from there)."""
        onset = started_ms + det.onset_ms
        offset = started_ms - call.bridged_ms if call.bridged_ms else 0   # the detector's start, into the call
        # windows and re-arming run on the audio's own clock: a listener late under load hands
        # detections over in bursts, and wall time would squeeze 20 s of digits into 10
        fired = call.detected(det, onset + det.duration_ms, offset)
        log.info("tap.detected", call_id=call.call_id, signature=det.signature, onset_offset_ms=offset + det.onset_ms,
                 duration_ms=det.duration_ms, level_dbfs=det.level_dbfs, detail=det.detail,
                 rule=fired.reason if fired else "", response=fired.response if fired else "")
        if fired is not None:
            self.spawn(self.enforce(call, time.perf_counter(), onset))

    async def extend(self, call: LiveCall) -> None:
        """Hold the next minute before it starts; if the account cannot, the call
        ends with its paid minutes (warned first), never overdrawn."""
        paid = call.paid_ms // MINUTE_MS
        amount = (rating.price(call.rate_cents, (paid + 1) * MINUTE_MS, call.tax_bps).cents
                  - rating.price(call.rate_cents, paid * MINUTE_MS, call.tax_bps).cents)
        try:
            outcome = await asyncio.to_thread(self.store.extend_hold, call.account, call.call_id, amount, paid)
            if outcome == "stale":  # another listener (before a restart) already held it
                money = await asyncio.to_thread(self.store.call_money, call.account, call.call_id)
                call.paid_ms = money.get("paid_minutes", 0) * MINUTE_MS
        except Exception as exc:  # Redis away: fail closed, the call ends with what it paid
            log.error("enforce.hold_failed", call_id=call.call_id, error=repr(exc))
            outcome = "short"
        if outcome == "held":
            call.paid_ms = (paid + 1) * MINUTE_MS
            log.info("enforce.minute_held", call_id=call.call_id, paid_minutes=paid + 1, cents=amount)
            await self.push_timeout(call)
        elif outcome == "short":
            metrics.HOLDS_REFUSED.labels("next").inc()
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
        if not await self.barge(call, str(seconds)):
            log.error("enforce.warning_failed", call_id=call.call_id, seconds_left=seconds)

    async def barge(self, call: LiveCall, exten: str) -> bool:
        """[ics-notice] exten spoken into both legs by ChanSpy's barge on a Local channel."""
        return await _succeeded(self.manager.send_action({
            "Action": "Originate", "Channel": f"Local/{exten}@{NOTICE_CONTEXT}/n",
            "Application": "ChanSpy", "Data": f"{call.inmate},qBES", "CallerID": "ICS notice",
            "Variable": f"ICS_LANG={call.language},ICS_PROMPTS={prompts.prompts_dir(call.language)}",
            "Timeout": 5000, "Async": "true"}))

    async def sweep(self, call_id: str, ended_ms: int | None = None, hung_up: tuple[str, str] = ("", "")) -> None:
        """Settle a hung-up call its hangup handler did not settle; hung_up (the channel that hung
        up first, the inmate's channel) lets settlement say who ended it."""
        try:
            if ended_ms:  # the hang-up's own time: waiting below must not be billed (first writer wins)
                await asyncio.to_thread(records.mark_ended, self.store.r, call_id, ended_ms)
            await asyncio.sleep(SETTLE_GRACE_S)
            rec = await asyncio.to_thread(records.get, self.store.r, call_id)
            if rec is None or rec.get("settled") == "1":
                return
            log.warning("ami.settle_sweep", call_id=call_id, why="hangup handler did not settle")
            await asyncio.to_thread(settlement.settle, self.store, call_id, "", *hung_up)
        except Exception as exc:  # Redis away: kept, dated by the hang-up event, retried
            self.keep_unsettled(call_id, ended_ms, exc, hung_up=hung_up)

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
        lost = self.ami_lost  # (when, call ids live then, of which bridged), before restart_evidence clears it
        try:
            drop = await self.restart_evidence()  # Asterisk restarted while AMI was lost: gone calls were dropped
        except StartupUnknown:
            return   # the next login rebuilds again, with the evidence (self.rebuilt stays False)
        for linkedid, fresh in seen.items():
            old = self.calls.get(linkedid)
            if old is not None and old.bridged:
                old.channels = fresh.channels
                continue
            self.calls[linkedid] = fresh
            both = fresh.inmate and len(bridges.get(fresh.bridge, set()) & set(fresh.channels)) >= 2
            if fresh.call_id and both:
                fresh.start()
                # who is talking cannot be read back from Asterisk, and with pauses shorter than
                # TALK_DETECT's threshold no new talk event may ever come: count the legs as
                # talking until one says it stopped, never a silence cut made up by the restart
                fresh.talking = {c for c in fresh.channels if c in bridges.get(fresh.bridge, set())}
                await self.load(fresh)
                fresh.skip_past_warnings(int(time.time() * 1000))
                log.info("enforce.watching", call_id=fresh.call_id, bridge=fresh.bridge, rebuilt=True)
        for call in gone:
            self.calls.pop(call.linkedid, None)
            if call.call_id and drop is not None and lost is not None and call.call_id in lost[1]:
                # live when AMI was lost, not already ending: Asterisk dropped it, whatever its phase
                self.spawn(self.system_drop(call.call_id, *drop, confirmed=call.call_id in lost[2]))
            elif call.call_id:  # it ended meanwhile, or was ending (dated by its first hang-up then)
                self.spawn(self.sweep(call.call_id, self.ending.get(call.linkedid),
                                      (self.ending_by.get(call.linkedid, ""), call.inmate)))
        self.bridges = bridges
        self.rebuilt = True  # live calls known again: the periodic orphan scan may trust them
        # calls that ended while nobody settled them (FastAGI and listener both down)
        for call_id in await asyncio.to_thread(orphans, self.store.r, set(seen), self.node):
            self.spawn(self.sweep(call_id))
        log.info("ami.rebuilt", channels=len(rows), calls=len(seen),
                 watching=sum(1 for c in self.calls.values() if c.bridged and c.call_id))

    # --- cluster: peer nodes that died with calls on them (ami.peers) ---
    async def watch_peers(self) -> None:
        while True:
            await asyncio.sleep(peers.PEER_CHECK_S)
            if not (self.rebuilt and self.manager.connected_event.is_set()):
                continue  # only a node that is itself well settles others' calls
            try:
                await self.settle_dead_peers()
            except Exception as exc:  # Redis away: the next pass will do
                log.error("ami.event_error", where="watch_peers", error=repr(exc))

    async def settle_dead_peers(self) -> None:
        for nid, info in (await asyncio.to_thread(peers.silent, self.store.r, self.node)).items():
            if not str(info.get("ami_port", "")).isdigit():
                continue
            why = await peers.ami_probe(info.get("ami_host", ""), int(info["ami_port"]))
            if why is None:  # its listener is down, its Asterisk is not: its calls go on (ami.peers)
                continue
            if not await asyncio.to_thread(peers.claim, self.store.r, nid, self.node):
                continue
            at_ms = int(info.get("beat_ms") or time.time() * 1000)
            calls = await asyncio.to_thread(peers.unsettled_calls, self.store.r, nid)
            if not calls:  # nothing of it left: forgotten until it beats again
                await asyncio.to_thread(self.store.r.srem, keys.NODES, nid)
            for rec in calls:
                call_id = rec["call_id"]
                if call_id in self.dropped or call_id in self.unsettled:
                    continue
                if rec.get("ended_ms"):  # it had ended before the node died: settled as it ended
                    self.spawn(self.sweep(call_id))
                    continue
                self.dropped.add(call_id)
                log.warning("ami.node_down", node=nid, call_id=call_id, last_heartbeat_ms=info.get("beat_ms"), ami=why)
                self.spawn(self.system_drop(call_id, at_ms, f"node_down={nid}", [peers.evidence(nid, info, why, rec)],
                                            confirmed=bool(rec.get("bridged_ms"))))

    # --- fault paths (issue 8): hang-ups that could not be settled, calls Asterisk dropped ---
    def init_fault_paths(self) -> None:
        a = self.cfg["ami"]
        self.unsettled: dict[str, Unsettled] = {}
        self.retry_s = a["settle_retry_ms"] / 1000
        self.retry_max_s = a["settle_retry_max_s"]
        self.orphan_scan_s = a["orphan_scan_s"]
        # when AMI was lost, the call ids live then (not already ending), and those of them bridged
        self.ami_lost: tuple[int, set[str], set[str]] | None = None
        self.ending: dict[str, int] = {}        # linkedid -> epoch ms a party's hang-up of the call began
        self.ending_by: dict[str, str] = {}     # linkedid -> the channel whose hang-up began first
        self.core_startup: str | None = None    # Asterisk's CoreStartupDate/Time at the last login
        self.shutdown: dict | None = None       # the last AMI Shutdown event
        self._shutdown_seen = asyncio.Event()
        self.dropped: set[str] = set()          # call ids already being recorded as system drops
        self.rebuilt = False                    # live calls rebuilt since the last (re)connect
        for name in SYSTEM_EVENTS:
            self.manager.register_event(name, self.on_event)
        if hasattr(self.manager, "disconnect_hooks"):
            self.manager.disconnect_hooks.append(self.on_ami_lost)

    def keep_unsettled(self, call_id: str, ended_ms: int | None, exc: BaseException,
                       drop: tuple | None = None, hung_up: tuple[str, str] = ("", "")) -> None:
        kept = self.unsettled.get(call_id)
        if kept is None:
            kept = self.unsettled[call_id] = Unsettled(ended_ms, drop=drop)
        kept.ended_ms = kept.ended_ms or ended_ms
        kept.drop = kept.drop or drop
        kept.hung_up = kept.hung_up if any(kept.hung_up) else hung_up
        kept.attempts += 1
        if kept.attempts == 1 or kept.attempts % 60 == 0:
            log.warning("ami.settle_retry", call_id=call_id, ended_ms=kept.ended_ms, attempts=kept.attempts,
                        error=repr(exc))

    async def retry_unsettled(self) -> None:
        """One pass over the kept hang-ups: each is dated by its AMI event and settled once."""
        for call_id, kept in list(self.unsettled.items()):
            try:
                if kept.drop is not None:
                    await self.record_drop(call_id, kept.ended_ms, *kept.drop)
                elif kept.ended_ms:
                    await asyncio.to_thread(records.mark_ended, self.store.r, call_id, kept.ended_ms)
                rec = await asyncio.to_thread(records.get, self.store.r, call_id)
                if rec is not None and (rec.get("settled") != "1" or kept.drop is not None):
                    # settle() credits a system drop even when the call was settled before
                    await asyncio.to_thread(settlement.settle, self.store, call_id, "", *kept.hung_up)
                    log.warning("ami.settle_sweep", call_id=call_id, why="settled once Redis answered",
                                attempts=kept.attempts)
                self.unsettled.pop(call_id, None)
            except Exception as exc:
                if time.monotonic() - kept.since > self.retry_max_s:
                    self.unsettled.pop(call_id, None)
                    log.error("ami.settle_gave_up", call_id=call_id, ended_ms=kept.ended_ms,
                              attempts=kept.attempts, error=repr(exc))
                else:
                    self.keep_unsettled(call_id, kept.ended_ms, exc)

    async def scan_orphans(self) -> None:
        """Calls that ended while nothing could settle them, found without waiting for a reconnect."""
        if not (self.rebuilt and self.manager.connected_event.is_set()):
            return  # the live calls are not known: rebuild() scans after the reconnect
        live = set(self.calls)
        found = await asyncio.to_thread(orphans, self.store.r, live, self.node)
        found = [cid for cid in found if cid not in self.unsettled]
        if found:
            log.warning("ami.orphan_scan", found=found)
        for call_id in found:
            self.spawn(self.sweep(call_id))

    async def upkeep(self) -> None:
        """Retry kept hang-ups every settle_retry_ms (and recording checks left pending); look for
        orphans every orphan_scan_s."""
        last_scan = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_s)
            if self.unsettled:
                await self.retry_unsettled()
            try:
                await self.recheck_recordings()
            except Exception as exc:  # Redis away: the next pass will do
                log.error("recording.check_failed", where="listener", error=repr(exc))
            if time.monotonic() - last_scan >= self.orphan_scan_s:
                last_scan = time.monotonic()
                try:
                    await self.scan_orphans()
                except Exception as exc:  # Redis away: the next scan will do
                    log.error("ami.event_error", where="orphan_scan", error=repr(exc))

    async def recheck_recordings(self) -> None:
        """Recordings whose file Asterisk had not closed when the call settled (ics.recordings):
        checked again, without waiting, until closed (or judged as they are after a minute)."""
        for call_id in await asyncio.to_thread(recordings.pending, self.store.r):
            await asyncio.to_thread(recordings.check, self.store, call_id, 0)

    async def heartbeat(self) -> None:
        """Say in Redis that calls are watched (keys.LISTENER_ALIVE), and how many are live
        (keys.LIVE_CALLS, admission control), every HEARTBEAT_S while logged in to AMI with the
        live calls rebuilt; the inmate flow places no call without them."""
        while True:
            if self.rebuilt and self.manager.connected_event.is_set():
                try:
                    await self.beat()
                except Exception as exc:  # Redis away: the flow cannot place calls anyway
                    log.error("ami.heartbeat_failed", error=repr(exc))
            await asyncio.sleep(HEARTBEAT_S)

    async def beat(self) -> None:
        """One heartbeat with the live count (ics.capacity.beat). A call the flow admitted is
        known as an inmate call from then on, before its call id reaches AMI (often only at
        the bridge)."""
        admitted = await asyncio.to_thread(capacity.setting_up, self.store.r, self.node)
        for linkedid in admitted:
            call = self.calls.get(linkedid)
            if call is not None:
                call.admitted = True
        a = self.cfg["ami"]
        await asyncio.to_thread(capacity.beat, self.store.r, self.live_calls(), set(self.calls), admitted,
                                node=self.node, where={"ami_host": a["host"], "ami_port": a["port"]})

    def live_calls(self) -> set[str]:
        """Linkedids of the inmate calls placed now, for admission control: an inmate call (its
        call id known, or admitted by the flow) with a leg besides the inmate's (ringing,
        announcement, menu, bridged, a closing prompt). A Local channel of a notice or a
        monitor is neither. A call between the flow's admission and its called leg counts as
        setting up (ics.capacity)."""
        return {linkedid for linkedid, c in self.calls.items()
                if (c.call_id or c.admitted) and any(chan != c.inmate for chan in c.channels)}

    def on_softhanguprequest(self, event):
        """Asterisk hangs every channel up on a stop or restart (Cause 4, before the hangup
        handlers run): the bridged calls it ends are system drops, dated by this event. Any
        other soft hang-up of the inmate's channel is the inmate leaving (on_hanguprequest)."""
        if str(event.get("Cause", "")) != SOFTHANGUP_SHUTDOWN:
            return self.on_hanguprequest(event)
        call = self.calls.get(str(event.get("Linkedid") or event.get("Uniqueid") or ""))
        if call is not None and call.call_id and call.bridged and call.call_id not in self.dropped \
                and call.linkedid not in self.ending:  # a call a party was already hanging up is theirs
            self.dropped.add(call.call_id)
            self.spawn(self.shutdown_drop(call.call_id, event_ms(event) or int(time.time() * 1000), event))
        return None

    def drop_cause(self, call: LiveCall, event) -> None:
        """A leg of a bridged call hung up with a cause meaning the network failed (a trunk's
        Q.850 27, 34, 38, ...): a system drop, dated by the Hangup event. The hangup handler
        sees only the inmate channel's own cause, so the called leg's is read here."""
        cause = settlement.system_drop_cause(str(event.get("Cause", "")))
        if cause is None or not (call.call_id and call.bridged) or call.call_id in self.dropped:
            return
        self.dropped.add(call.call_id)
        at_ms = event_ms(event) or int(time.time() * 1000)
        events = [dict(evidence(event), Cause=str(cause), **{"Cause-txt": str(event.get("Cause-txt", ""))})]
        self.spawn(self.system_drop(call.call_id, at_ms, f"hangupcause={cause}", events))

    def on_shutdown(self, event):
        self.shutdown = dict(event)
        self._shutdown_seen.set()
        log.warning("ami.shutdown", shutdown=event.get("Shutdown"), restart=event.get("Restart"))
        return None

    def note_ending(self, call: LiveCall, event) -> None:
        """A party's hang-up of the call began (a leg's HangupRequest or SoftHangupRequest other
        than the shutdown's, a leg's Hangup): should AMI be lost now, the call was not dropped
        by the system. Calls no longer live are forgotten here."""
        for linkedid in [k for k in self.ending if k not in self.calls]:
            del self.ending[linkedid]
            self.ending_by.pop(linkedid, None)
        self.ending.setdefault(call.linkedid, event_ms(event) or int(time.time() * 1000))
        self.ending_by.setdefault(call.linkedid, str(event.get("Channel", "")))

    def on_ami_lost(self) -> None:
        """Every call of ours live now (it has a call id), bridged or not, unless its hang-up
        had begun or its drop is already recorded: if Asterisk turns out to have restarted,
        these are the calls it dropped (rebuild)."""
        self.rebuilt = False
        if self.ami_lost is None:
            live = [c for c in self.calls.values() if c.call_id and c.linkedid not in self.ending
                    and c.call_id not in self.dropped]
            self.ami_lost = (int(time.time() * 1000), {c.call_id for c in live},
                             {c.call_id for c in live if c.bridged})

    async def shutdown_drop(self, call_id: str, at_ms: int, event) -> None:
        try:  # the Shutdown event follows the hang-ups by about a second: its evidence too
            await asyncio.wait_for(self._shutdown_seen.wait(), SHUTDOWN_WAIT_S)
        except asyncio.TimeoutError:
            pass
        events = [dict(evidence(event), Cause=str(event.get("Cause", "")), why="shutdown")]
        if self.shutdown is not None:
            events.append(_shutdown_evidence(self.shutdown))
        await self.system_drop(call_id, at_ms, "asterisk_shutdown", events)

    async def restart_evidence(self) -> tuple[int, str, list] | None:
        """After a reconnect: did Asterisk stop or restart while AMI was lost? (a Shutdown event,
        or a new CoreStartupTime). Returns (when AMI was lost, threshold, evidence) or None."""
        lost, self.ami_lost = self.ami_lost, None
        shutdown, self.shutdown = self.shutdown, None
        self._shutdown_seen.clear()
        try:
            status = await self.manager.send_action({"Action": "CoreStatus"})
            status = status[0] if isinstance(status, list) else status
            startup = f"{status.get('CoreStartupDate', '')} {status.get('CoreStartupTime', '')}".strip()
        except Exception as exc:
            log.error("ami.action_failed", action="CoreStatus", error=repr(exc))
            # the connection went again before Asterisk said when it started (it drops AMI while
            # it boots): nothing is known yet. The evidence is kept for the next reconnect's
            # rebuild, which asks again; the calls gone meanwhile are not settled on a guess
            self.ami_lost = lost or self.ami_lost
            self.shutdown = shutdown or self.shutdown
            raise StartupUnknown from exc
        before, self.core_startup = self.core_startup, startup or self.core_startup
        if lost is None:
            return None
        restarted = bool(startup and before and startup != before)
        if shutdown is None and not restarted:
            return None
        events = [{"event": "AMIConnectionLost", "time": f"{lost[0] / 1000:.3f}", "channel": ""}]
        if shutdown is not None:
            events.insert(0, _shutdown_evidence(shutdown))
        if restarted:
            events.append({"event": "CoreStatus", "time": f"{time.time():.3f}", "channel": "",
                           "CoreStartup": startup, "before": before or ""})
        at_ms = event_ms(shutdown) if shutdown is not None else None
        return (min(at_ms or lost[0], lost[0]), "asterisk_restart" if restarted else "asterisk_shutdown", events)

    async def record_drop(self, call_id: str, at_ms: int | None, threshold: str, events: list,
                          confirmed: bool = True) -> None:
        """The drop dated at_ms. A call AMI never showed bridged (both legs' BridgeEnter) is
        billed nothing: its billing stops at its bridged_ms (the callee flow writes it just
        before Dial bridges, and Asterisk may have died in between)."""
        at_ms = at_ms or int(time.time() * 1000)
        await asyncio.to_thread(records.mark_ended, self.store.r, call_id, at_ms)
        cut_ms = at_ms
        if not confirmed:
            bridged = (await asyncio.to_thread(records.get, self.store.r, call_id) or {}).get("bridged_ms")
            if bridged:
                cut_ms = min(at_ms, int(bridged))
                events = [*events, {"event": "NoBridgeSeen", "time": f"{at_ms / 1000:.3f}", "channel": "",
                                    "bridged_ms": str(bridged)}]
        if await asyncio.to_thread(records.record_system_drop, self.store.r, call_id, threshold, cut_ms, events):
            log.warning("ami.system_drop", call_id=call_id, threshold=threshold, at_ms=at_ms, cut_ms=cut_ms,
                        evidence=[e.get("event") for e in events])

    async def system_drop(self, call_id: str, at_ms: int, threshold: str, events: list,
                          confirmed: bool = True) -> None:
        """Record a call the system dropped as system_error, then settle it (or, if its hangup
        handler settled it first as a plain hang-up, let settlement's auto credit apply, once).
        confirmed: AMI showed the call bridged (else nothing of it is billed)."""
        try:
            await self.record_drop(call_id, at_ms, threshold, events, confirmed)
            await asyncio.to_thread(settlement.settle, self.store, call_id)
        except Exception as exc:
            self.keep_unsettled(call_id, at_ms, exc, drop=(threshold, events, confirmed))


def _shutdown_evidence(event) -> dict:
    return {"event": "Shutdown", "time": str(event.get("Timestamp", "")), "channel": "",
            "Shutdown": str(event.get("Shutdown", "")), "Restart": str(event.get("Restart", ""))}


ORPHAN_SCAN = 500       # most recent call records looked at after a (re)connect
ORPHAN_MIN_AGE_MS = 10_000


def orphans(r, live_linkedids: set[str], node: str = keys.DEFAULT_NODE) -> list[str]:
    """Recent unsettled calls of this node whose inmate channel is no longer on its Asterisk
    (another node's calls are that node's; a record from before nodes is the single box's)."""
    now = int(time.time() * 1000)
    return [rec["call_id"] for rec in records.recent(r, ORPHAN_SCAN)
            if rec.get("settled") != "1" and rec.get("uniqueid") not in live_linkedids
            and (rec.get("node") or keys.DEFAULT_NODE) == node
            and now - rec.get("started_ms", now) > ORPHAN_MIN_AGE_MS]


def record_cut(r, call_id: str, cut: Cut, info: dict | None = None) -> None:
    records.record_cut(r, call_id, cut.reason, cut.threshold, cut.at_ms, cut.events)
    records.note_fired(r, call_id, cut.fired())


def note_fired(r, call_id: str, fired: Cut, info: dict | None = None) -> None:
    """A rule that warned or flagged: on the record's `fired` list and the investigators' alerts."""
    records.note_fired(r, call_id, fired.fired())
    records.alert(r, call_id, fired.fired(), info or {})


def rules_overrides(r, call_id: str, number: str) -> tuple[dict[str, str], str]:
    """This call's responses over its facility's: its number's (icsctl number rules), then its own
    (keys.call_rules, e.g. a relay call). A value that is no rule or response is ignored, logged."""
    out: dict[str, str] = {}
    own = r.hgetall(keys.call_rules(call_id))
    why = own.pop("why", "")
    for source in (r.hgetall(keys.number_rules(number)) if number else {}, own):
        for rule, response in source.items():
            if rule in config_mod.DEFAULT_RESPONSES and response in config_mod.RESPONSES:
                out[rule] = response
            else:
                log.error("enforce.bad_override", call_id=call_id, rule=rule, response=response)
    return out, why


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _succeeded(pending) -> bool:
    try:
        reply = await pending
    except Exception as exc:  # connection lost: never re-sent (ami.connection)
        log.error("ami.action_failed", error=repr(exc))
        return False
    if isinstance(reply, list):  # an async Originate: the queued reply, then its OriginateResponse
        reply = reply[-1] if reply else {}
    return str(getattr(reply, "get", lambda *_: "")("Response", "")).lower() == "success"


def build(cfg: config_mod.Config, loop: asyncio.AbstractEventLoop) -> tuple[GuardedManager, Listener]:
    a = cfg["ami"]
    manager = GuardedManager(host=a["host"], port=a["port"], username=a["listener_user"], secret=a["secret"],
                             ping_interval_s=a["ping_interval_s"], ping_timeout_s=a["ping_timeout_s"],
                             loop=loop, reconnect_timeout=1)
    return manager, Listener(cfg, Store(connect(cfg), cfg), manager)


def health(manager: GuardedManager, store: Store) -> str | None:
    """/health: the listener enforces nothing without AMI and settles nothing without Redis."""
    if not manager.connected_event.is_set():
        return f"ami: not logged in to {manager.config['host']}:{manager.config['port']}"
    return metrics.redis_problem(store.r)


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
    config_mod.yield_cpu(cfg["ami"]["nice"])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    manager, listener = build(cfg, loop)
    metrics.AMI_CONNECTED.set_function(lambda: 1 if manager.connected_event.is_set() else 0)
    try:
        metrics.serve(cfg["metrics"]["host"], cfg["ami"]["metrics_port"], lambda: health(manager, listener.store),
                      "ami.metrics_port")
    except metrics.PortTaken as exc:
        log.error("service.config_error", error=str(exc))
        return 2
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("service.start", service="ami", host=cfg["ami"]["host"], port=cfg["ami"]["port"], node=cfg["node"]["id"],
             metrics_port=cfg["ami"]["metrics_port"])
    if cfg["ami"]["tap"] and cfg["ami"]["detector"] == "tap":
        loop.run_until_complete(listener.tap.start())
    manager.connect()
    ticker = loop.create_task(listener.ticker())
    upkeep = loop.create_task(listener.upkeep())
    beat = loop.create_task(listener.heartbeat())
    watch = loop.create_task(listener.watch_peers())
    loop.run_until_complete(stop.wait())
    for task in (ticker, upkeep, beat, watch):
        task.cancel()
    listener.tap.close()
    manager.close()
    log.info("service.stop", service="ami")
    return 0


if __name__ == "__main__":
    sys.exit(main())
