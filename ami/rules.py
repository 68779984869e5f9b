"""The disconnect rules: pure decisions over one live call's AMI events and clock.

No I/O here. ami/listener.py feeds events (`observe`) and clock ticks (`tick`)
into a LiveCall; each returns a Cut (why the call must end, with the rule, its
threshold and the events that triggered it) or a notice to play. Rules apply
only once both legs of an inmate call share a bridge (the called party
accepted); before that, keypad digits are the menu and holds are harmless.

Rules (per-facility settings in ics.config [facility_defaults]):
  hold        Hold on either leg, not undone within hold_grace_s
  hook_flash  Flash on either leg (SIP INFO or RFC 2833 event 16)
  transfer    BlindTransfer / AttendedTransfer touching a leg of the call
  conference  the call's bridge gains a third channel, a leg joins a
              ConfBridge, or a new channel is linked to the bridged call
  silence     no ChannelTalkingStart/Stop on either leg for silence_s, and
              neither leg talking (talk that began before the bridge counts)
  extra_digits  more than digits_max DTMF digits from the called side in
              digits_window_s
  time_limit  the call's limit (facility limit or what the balance bought),
              after the warn_before_s notices

Before the bridge (the called party hears the announcement and menu inside
Dial's U() gosub) two small decisions apply instead (`before_accept`):
  the inmate's HangupRequest: Asterisk itself notices only when the gosub
              returns, so the called leg must be ended for it
              (inmate_hangup_before_accept)
  a Flash, Hold or transfer on either leg: recorded with its evidence and,
              per facility (before_accept = "end", the default), the call ends
              with that rule's reason; "record" only notes it on the record
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from ics.config import DEFAULT_RESPONSES, parse_responses, parse_warnings
from ics.rating import MINUTE_MS

from .tones import Detection, Thresholds

# AMI headers worth keeping as evidence, per event
EVIDENCE_HEADERS = {
    "Hold": ("MusicClass",),
    "BlindTransfer": ("TransfererChannel", "TransfereeChannel", "Extension", "Context", "Result"),
    "AttendedTransfer": ("OrigTransfererChannel", "SecondTransfererChannel", "TransfereeChannel",
                         "TransferTargetChannel", "Result", "DestType"),
    "BridgeEnter": ("BridgeUniqueid", "BridgeNumChannels", "BridgeTechnology"),
    "ConfbridgeJoin": ("Conference",),
    "DTMFEnd": ("Digit", "Direction", "DurationMs"),
    "ChannelTalkingStop": ("Duration",),
    "Newchannel": ("Exten", "Context", "CallerIDNum"),
}
MAX_EVIDENCE = 12


def evidence(event: Mapping[str, Any]) -> dict[str, str]:
    """What the call record keeps of one AMI event: name, time, channel, headers that matter."""
    name = str(event.get("Event", ""))
    out = {"event": name, "time": str(event.get("Timestamp", "")), "channel": str(event.get("Channel", ""))}
    for h in EVIDENCE_HEADERS.get(name, ()):
        if event.get(h) not in (None, ""):
            out[h] = str(event.get(h))
    return out


def event_ms(event: Mapping[str, Any]) -> int | None:
    """When Asterisk raised the event (manager.conf timestampevents), epoch ms."""
    try:
        return int(float(event.get("Timestamp")) * 1000)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Policy:
    """One facility's rule settings (read from its ics.config facility settings)."""
    hold: bool = True
    hold_grace_s: int = 3
    hook_flash: bool = True
    transfer: bool = True
    silence: bool = True
    silence_s: int = 30
    extra_digits: bool = True
    digits_max: int = 3
    digits_window_s: int = 10
    warn_before_s: tuple[int, ...] = (60, 30)
    before_accept: str = "end"             # a fault before the bridge: "end" the call or only "record" it
    responses: tuple[tuple[str, str], ...] = ()   # rule -> response, over DEFAULT_RESPONSES
    tones: Thresholds = Thresholds()       # the tone detector's plan and thresholds (ami.tones)
    sequence_window_s: int = 8             # flash_sequence: dead air, then a tone or digits this soon
    inband_digits_max: int = 6             # in-band digits from the called side within digits_window_s

    def response(self, rule: str) -> str:
        """What this facility does when rule fires; a rule switched off (rule_hold = false ...)
        is off whatever its response says."""
        switch = {"hold": self.hold, "hook_flash": self.hook_flash, "transfer": self.transfer,
                  "conference": self.transfer, "silence": self.silence, "extra_digits": self.extra_digits}
        if not switch.get(rule, True):
            return "off"
        return dict(self.responses).get(rule, DEFAULT_RESPONSES.get(rule, "disconnect"))

    @classmethod
    def from_facility(cls, f: Mapping[str, Any]) -> "Policy":
        return cls(hold=f["rule_hold"], hold_grace_s=f["hold_grace_s"], hook_flash=f["rule_hook_flash"],
                   transfer=f["rule_transfer"], silence=f["rule_silence"], silence_s=f["silence_s"],
                   extra_digits=f["rule_extra_digits"], digits_max=f["digits_max"],
                   digits_window_s=f["digits_window_s"], warn_before_s=parse_warnings(f["warn_before_s"]),
                   before_accept=f["before_accept"],
                   responses=tuple(sorted(parse_responses(f["responses"]).items())),
                   tones=Thresholds(plan=f["tone_plan"], dial_tone_ms=f["dial_tone_ms"],
                                    ringback_ms=f["ringback_ms"], busy_bursts=f["busy_bursts"],
                                    drop_min_ms=f["drop_min_ms"]),
                   sequence_window_s=f["sequence_window_s"], inband_digits_max=f["inband_digits_max"])


# The rules that listen to the call's audio and keypad: a TTY's Baudot tones (1400/1800 Hz), its
# long silences and keys are normal on a relay or TTY call, so these are off for one (the call
# record's rules_off, written by the call flow with why).
AUDIO_RULES = frozenset({"silence", "extra_digits", "dial_tone", "ringback", "busy", "sit", "inband_digits",
                         "dead_air", "flash_sequence"})


def rules_off(rec: Mapping[str, Any] | None) -> set[str]:
    """The audio rules a call's record turns off (rules_off, written by the call flow with why)."""
    return {name for name in str((rec or {}).get("rules_off") or "").split(",") if name} & AUDIO_RULES


def for_call(policy: Policy, rec: Mapping[str, Any] | None) -> Policy:
    """The call's own policy: the facility's, less the rules its record turns off (the on/off
    settings off, their responses "off"; the listener also puts them over the number's overrides)."""
    off = rules_off(rec)
    fields = {f.name for f in dataclasses.fields(policy)}
    responses = dict(policy.responses) | {name: "off" for name in off}
    return dataclasses.replace(policy, responses=tuple(sorted(responses.items())),
                               **{name: False for name in off if name in fields})


@dataclass(frozen=True)
class Cut:
    """A rule fired. response "disconnect": the call ends (billing stops at at_ms); "warn": both
    parties hear the three-way warning, and the next rule that fires disconnects; "flag": the
    call goes on, the record and the investigators' alert stream carry the evidence."""
    reason: str            # a code from ics.reasons (the rule's name)
    threshold: str         # the setting that was crossed, e.g. "hold_grace_s=3"
    events: tuple[dict, ...]
    at_ms: int             # when the rule fired (epoch ms): billing stops here
    response: str = "disconnect"

    def fired(self) -> dict:
        """What the call record's `fired` list keeps of it."""
        return {"rule": self.reason, "response": self.response, "at_ms": self.at_ms,
                "threshold": self.threshold, "evidence": list(self.events)}


@dataclass(frozen=True)
class Noted:
    """A fault before the bridge that the facility only records (before_accept = "record")."""
    reason: str
    events: tuple[dict, ...]


BEFORE_ACCEPT_FAULTS = {"Flash": ("hook_flash", "hook_flash"), "Hold": ("hold", "hold"),
                        "BlindTransfer": ("transfer", "transfer"), "AttendedTransfer": ("transfer", "transfer")}


@dataclass
class LiveCall:
    linkedid: str
    call_id: str = ""
    inmate: str = ""                       # the inmate's channel (its Uniqueid is the Linkedid)
    channels: dict[str, str] = field(default_factory=dict)   # channel name -> uniqueid
    bridge: str = ""
    bridged: bool = False
    policy: Policy = field(default_factory=Policy)
    bridged_ms: int = 0                    # epoch ms the call was bridged (from the call record)
    limit_ms: int = 0                      # 0 until the call record is read
    talking: set[str] = field(default_factory=set)
    quiet_since: float = 0.0               # monotonic: last talking change (or the bridge)
    quiet_event: dict | None = None
    holds: dict[str, tuple[float, dict]] = field(default_factory=dict)
    digits: deque = field(default_factory=deque)      # (monotonic, evidence) from the called side
    warned_limit: set[int] = field(default_factory=set)   # time-limit notices given
    cut: Cut | None = None
    fired: deque = field(default_factory=deque)   # Cuts of any response, for the listener to act on
    overrides: dict[str, str] = field(default_factory=dict)  # rule -> response for this call (its
                                           # number's override, then the call's own: ics.keys)
    warned: bool = False                   # a "warn" response was given: the next rule disconnects
    drops: deque = field(default_factory=deque)     # (wall ms, evidence) of dead air (flash_sequence)
    inband: deque = field(default_factory=deque)    # (wall ms, evidence) of in-band digits
    last_tone: dict[str, int] = field(default_factory=dict)  # rule -> wall ms it last fired
    tap_id: str | None = None              # the called leg's audio tap (ami.audiotap)
    info: dict[str, str] = field(default_factory=dict)       # facility, inmate, number (alerts)
    # money: minutes are held one at a time (ics.store extend_hold) before they start
    account: str = ""
    rate_cents: int = 0
    tax_bps: int = 0
    paid_ms: int = 0                       # 0: the call holds no per-minute funds
    extending: bool = False
    funds_short: bool = False              # the next minute could not be held: limit_ms = paid_ms
    inmate_left: bool = False              # the inmate's hang-up request before the bridge was seen
    courtesy: bool = False                 # a courtesy call: [ics-cut] also says how to open an account
    language: str = "en"                   # the called party's (the call record's called_language):
                                           # the notices are said in it
    admitted: bool = False                 # the flow admitted it (ics.capacity): an inmate call, counted
                                           # live (admission control) once a leg besides the inmate's exists

    def other_legs(self) -> list[str]:
        return [c for c in self.channels if c != self.inmate]

    # --- events ---------------------------------------------------------------
    def observe(self, event: Mapping[str, Any], now: float | None = None) -> Cut | None:
        """One AMI event of this call. Returns a Cut when a rule says the call must end.

        Before the bridge no rule applies, but who is talking is tracked: TALK_DETECT
        runs from before the bridge and reports a start once, so a leg already talking
        when the call is bridged must count as talking for the silence rule."""
        if self.cut is not None:
            return None
        if not self.bridged:
            if event.get("Event") in ("ChannelTalkingStart", "ChannelTalkingStop"):
                self._talk(event, time.monotonic() if now is None else now)
            return None
        broken = self._rule_broken(event, time.monotonic() if now is None else now)
        # dated by the event's own time, not when the listener got to it: a leg can hang up
        # in between, and a cut must never be recorded after the call's end
        return self._cut(*broken, event_ms(event), respond=True) if broken else None

    def on(self, rule: str) -> bool:
        return self.response(rule) != "off"

    def response(self, rule: str) -> str:
        """The call's effective response to rule: the facility's, overridden by the number's,
        then by the call's own (e.g. a relay call that turns the tone rules off)."""
        return self.overrides.get(rule) or self.policy.response(rule)

    def effective(self) -> dict[str, str]:
        """Every rule's response on this call (the record keeps it)."""
        return {rule: self.response(rule) for rule in DEFAULT_RESPONSES}

    def _rule_broken(self, event: Mapping[str, Any], now: float) -> tuple[str, str, list[dict]] | None:
        """Track one event; (reason, threshold, evidence) when it breaks a rule."""
        name = event.get("Event")
        chan = str(event.get("Channel", ""))
        p = self.policy
        if name == "Hold" and self.on("hold") and chan in self.channels:
            self.holds[chan] = (now, evidence(event))
            if p.hold_grace_s == 0:
                self.holds.pop(chan)
                return "hold", f"hold_grace_s={p.hold_grace_s}", [evidence(event)]
        elif name == "Unhold":
            self.holds.pop(chan, None)
        elif name == "Flash" and self.on("hook_flash") and chan in self.channels:
            return "hook_flash", "rule_hook_flash=on", [evidence(event)]
        elif name in ("BlindTransfer", "AttendedTransfer") and self.on("transfer"):
            involved = {str(v) for k, v in event.items() if k.endswith("Channel")}
            if involved & set(self.channels):
                return "transfer", "rule_transfer=on", [evidence(event)]
        elif name == "BridgeEnter" and event.get("BridgeUniqueid") == self.bridge and self.on("conference"):
            if _int(event.get("BridgeNumChannels")) > 2 or chan not in self.channels:
                return "conference", "bridge_channels_max=2", [evidence(event)]
        elif name == "ConfbridgeJoin" and self.on("conference") and chan in self.channels:
            return "conference", "rule_transfer=on", [evidence(event)]
        elif name == "Newchannel" and self.on("conference") and chan not in self.channels:
            # a new channel linked to a bridged inmate call: someone is dialing out of it
            return "conference", "linked_channels_max=2", [evidence(event)]
        elif name in ("ChannelTalkingStart", "ChannelTalkingStop"):
            self._talk(event, now)
        elif (name == "DTMFEnd" and self.on("extra_digits") and chan in self.channels and chan != self.inmate
              and event.get("Direction") == "Received"):
            self.digits.append((now, evidence(event)))
            while self.digits and now - self.digits[0][0] > p.digits_window_s:
                self.digits.popleft()
            if len(self.digits) > p.digits_max:
                broken = [e for _, e in self.digits]
                self.digits.clear()  # a warning or flag starts the count again
                return ("extra_digits", f"digits_max={p.digits_max} in digits_window_s={p.digits_window_s}",
                        broken)
        return None

    # --- the called leg's audio (ami.tones detections) ------------------------------
    TONE_REARM_MS = 10_000  # a tone rule that warned or flagged fires again only after this

    def detected(self, det: Detection, wall_ms: int, call_offset_ms: int = 0) -> Cut | None:
        """One detection in the called leg's audio. Dead air alone is weak: followed within
        sequence_window_s by a tone or digits it makes the flash_sequence rule, with the whole
        sequence as evidence; each signature is also its own rule."""
        if self.cut is not None or not self.bridged:
            return None
        p = self.policy
        ev = det.evidence(call_offset_ms)
        ev["time"] = f"{wall_ms / 1000:.3f}"
        window_ms = p.sequence_window_s * 1000
        while self.drops and wall_ms - self.drops[0][0] > window_ms:
            self.drops.popleft()
        if det.signature == "dead_air":
            self.drops.append((wall_ms, ev))
            rule, threshold, events = "dead_air", f"drop_min_ms={p.tones.drop_min_ms}", [ev]
        elif self.drops and self.on("flash_sequence"):
            events = [e for _, e in self.drops] + [ev]
            self.drops.clear()
            return self._fire("flash_sequence", f"sequence_window_s={p.sequence_window_s}", events, wall_ms)
        elif det.signature == "digits":
            self.inband.append((wall_ms, ev))
            while self.inband and wall_ms - self.inband[0][0] > p.digits_window_s * 1000:
                self.inband.popleft()
            if len(self.inband) <= p.inband_digits_max:
                return None
            events = [e for _, e in self.inband]
            self.inband.clear()
            rule, threshold = ("inband_digits",
                               f"inband_digits_max={p.inband_digits_max} in digits_window_s={p.digits_window_s}")
        else:
            rule, events = det.signature, [ev]
            threshold = {"dial_tone": f"dial_tone_ms={p.tones.dial_tone_ms} plan={p.tones.plan}",
                         "ringback": f"ringback_ms={p.tones.ringback_ms} plan={p.tones.plan}",
                         "busy": f"busy_bursts={p.tones.busy_bursts} plan={p.tones.plan}",
                         "sit": "sit=3 segments"}[rule]
        if not self.on(rule) or wall_ms - self.last_tone.get(rule, -10**12) < self.TONE_REARM_MS:
            return None
        return self._fire(rule, threshold, events, wall_ms)

    def _fire(self, rule: str, threshold: str, events: list[dict], wall_ms: int) -> Cut:
        self.last_tone[rule] = wall_ms
        return self._cut(rule, threshold, events, wall_ms, respond=True)

    def _talk(self, event: Mapping[str, Any], now: float) -> None:
        chan = str(event.get("Channel", ""))
        if event.get("Event") == "ChannelTalkingStart":
            self.talking.add(chan)
        else:
            self.talking.discard(chan)
        self.quiet_since, self.quiet_event = now, evidence(event)

    # --- before the bridge ------------------------------------------------------------
    def inmate_left_before_bridge(self, event: Mapping[str, Any]) -> bool:
        """The inmate's channel asked to hang up while the called party is still in the
        announcement or menu: the called leg must be told and released (Asterisk would
        only notice when the U() gosub returns)."""
        if (event.get("Event") in ("HangupRequest", "SoftHangupRequest") and not self.bridged
                and not self.inmate_left and self.cut is None and bool(self.inmate)
                and str(event.get("Channel", "")) == self.inmate and bool(self.other_legs())):
            self.inmate_left = True  # once: a HangupRequest is often followed by a SoftHangupRequest
            return True
        return False

    def before_accept(self, event: Mapping[str, Any]) -> Cut | Noted | None:
        """A hook flash, hold or transfer on a leg before the bridge: a Cut when the facility
        ends the call for it (its rule on and before_accept = "end"), else a Noted to record."""
        if self.bridged or self.cut is not None:
            return None
        name = str(event.get("Event", ""))
        if name not in BEFORE_ACCEPT_FAULTS:
            return None
        if name in ("BlindTransfer", "AttendedTransfer"):
            involved = {str(v) for k, v in event.items() if k.endswith("Channel")}
        else:
            involved = {str(event.get("Channel", ""))}
        if not involved & set(self.channels):
            return None
        reason, rule = BEFORE_ACCEPT_FAULTS[name]
        p = self.policy
        on = {"hook_flash": p.hook_flash, "hold": p.hold, "transfer": p.transfer}[rule]
        if on and p.before_accept == "end":
            return self._cut(reason, "before_accept=end", [evidence(event)], event_ms(event))
        return Noted(reason, (evidence(event),))

    def start(self, now: float | None = None, event: Mapping[str, Any] | None = None) -> None:
        """Both legs are in one bridge: the rules apply from now. Legs talking since
        before the bridge (self.talking) still count; the quiet time starts here."""
        self.bridged = True
        self.quiet_since = time.monotonic() if now is None else now
        self.quiet_event = evidence(event) if event else None

    # --- clock ------------------------------------------------------------------
    def tick(self, now: float | None = None, wall_ms: int | None = None) -> tuple[Cut | None, list[int]]:
        """Deadlines: hold grace, silence, time-limit notices and the limit itself.

        Returns (a Cut or None, the warnings (seconds left) to announce now)."""
        now = time.monotonic() if now is None else now
        wall_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        if self.cut is not None or not self.bridged:
            return None, []
        p = self.policy
        for chan, (since, ev) in list(self.holds.items()):
            if self.on("hold") and now - since >= p.hold_grace_s:
                del self.holds[chan]  # a warning or flag does not fire again for the same hold
                return self._cut("hold", f"hold_grace_s={p.hold_grace_s}", [ev], wall_ms, respond=True), []
        if self.on("silence") and not self.talking and now - self.quiet_since >= p.silence_s:
            evs = [self.quiet_event] if self.quiet_event else []
            self.quiet_since = now  # after a warning or flag, another silence_s is needed
            return self._cut("silence", f"silence_s={p.silence_s}", evs, wall_ms, respond=True), []
        if not (self.limit_ms and self.bridged_ms):
            return None, []
        deadline = self.bridged_ms + self.limit_ms
        if wall_ms >= deadline:
            threshold = (f"paid_minutes={self.paid_ms // MINUTE_MS}: the account could not hold the next"
                         if self.funds_short else f"limit_s={self.limit_ms // 1000}")
            return self._cut("time_limit", threshold,
                             [{"event": "TimeLimit", "bridged_ms": str(self.bridged_ms),
                               "limit_ms": str(self.limit_ms)}], at_ms=deadline), []
        due = [w for w in p.warn_before_s
               if w not in self.warned_limit and w * 1000 < self.limit_ms and wall_ms >= deadline - w * 1000]
        self.warned_limit.update(due)
        # if several fell due at once (the funds ran short), say only what is really left
        return None, [round((deadline - wall_ms) / 1000)] if due else []

    def extension_due(self, wall_ms: int, ahead_ms: int) -> bool:
        """Time to hold the next minute: ahead_ms before the paid ones run out."""
        return (self.bridged and self.cut is None and self.paid_ms > 0 and not self.funds_short
                and not self.extending and self.paid_ms < self.limit_ms
                and wall_ms >= self.bridged_ms + self.paid_ms - ahead_ms)

    def funds_ran_short(self) -> None:
        """The next minute cannot be held: the call ends when the paid ones do."""
        self.funds_short = True
        self.limit_ms = min(self.limit_ms, self.paid_ms)

    def skip_past_warnings(self, wall_ms: int) -> None:
        """After a restart: notices whose moment passed are not replayed late."""
        if self.limit_ms and self.bridged_ms:
            deadline = self.bridged_ms + self.limit_ms
            self.warned_limit.update(w for w in self.policy.warn_before_s if wall_ms > deadline - w * 1000)

    def _cut(self, reason: str, threshold: str, events: list[dict], at_ms: int | None = None,
             respond: bool = False) -> Cut:
        """A rule fired: respond (in-call rules) applies the call's response to it; otherwise
        (time limit, before the bridge) the call ends."""
        response = self.response(reason) if respond else "disconnect"
        if response == "warn" and self.warned:
            response, threshold = "disconnect", f"{threshold}; after a warning"
        elif response == "warn":
            self.warned = True
        fired = Cut(reason, threshold, tuple(events[-MAX_EVIDENCE:]),
                    int(time.time() * 1000) if at_ms is None else at_ms, response)
        if response == "disconnect":
            self.cut = fired
        self.fired.append(fired)
        return fired


def _int(v: Any) -> int:
    try:
        return int(str(v))
    except ValueError:
        return 0
