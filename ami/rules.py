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

from ics.config import parse_warnings
from ics.rating import MINUTE_MS

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

    @classmethod
    def from_facility(cls, f: Mapping[str, Any]) -> "Policy":
        return cls(hold=f["rule_hold"], hold_grace_s=f["hold_grace_s"], hook_flash=f["rule_hook_flash"],
                   transfer=f["rule_transfer"], silence=f["rule_silence"], silence_s=f["silence_s"],
                   extra_digits=f["rule_extra_digits"], digits_max=f["digits_max"],
                   digits_window_s=f["digits_window_s"], warn_before_s=parse_warnings(f["warn_before_s"]),
                   before_accept=f["before_accept"])


# The rules that listen to the call's audio and keypad: a TTY's Baudot tones (1400/1800 Hz), its
# long silences and keys are normal on a relay or TTY call, so these are off for one (the call
# record's rules_off, written by the call flow with why). A tone rule joins this set.
AUDIO_RULES = frozenset({"silence", "extra_digits"})


def for_call(policy: Policy, rec: Mapping[str, Any] | None) -> Policy:
    """The call's own policy: the facility's, less the rules its record turns off."""
    off = {name for name in str((rec or {}).get("rules_off") or "").split(",") if name} & AUDIO_RULES
    fields = {f.name for f in dataclasses.fields(policy)}
    return dataclasses.replace(policy, **{name: False for name in off if name in fields})


@dataclass(frozen=True)
class Cut:
    reason: str            # a code from ics.reasons
    threshold: str         # the setting that was crossed, e.g. "hold_grace_s=3"
    events: tuple[dict, ...]
    at_ms: int             # when the rule fired (epoch ms): billing stops here


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
    warned: set[int] = field(default_factory=set)
    cut: Cut | None = None
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
        return self._cut(*broken, event_ms(event)) if broken else None

    def _rule_broken(self, event: Mapping[str, Any], now: float) -> tuple[str, str, list[dict]] | None:
        """Track one event; (reason, threshold, evidence) when it breaks a rule."""
        name = event.get("Event")
        chan = str(event.get("Channel", ""))
        p = self.policy
        if name == "Hold" and p.hold and chan in self.channels:
            self.holds[chan] = (now, evidence(event))
            if p.hold_grace_s == 0:
                return "hold", f"hold_grace_s={p.hold_grace_s}", [evidence(event)]
        elif name == "Unhold":
            self.holds.pop(chan, None)
        elif name == "Flash" and p.hook_flash and chan in self.channels:
            return "hook_flash", "rule_hook_flash=on", [evidence(event)]
        elif name in ("BlindTransfer", "AttendedTransfer") and p.transfer:
            involved = {str(v) for k, v in event.items() if k.endswith("Channel")}
            if involved & set(self.channels):
                return "transfer", "rule_transfer=on", [evidence(event)]
        elif name == "BridgeEnter" and event.get("BridgeUniqueid") == self.bridge and p.transfer:
            if _int(event.get("BridgeNumChannels")) > 2 or chan not in self.channels:
                return "conference", "bridge_channels_max=2", [evidence(event)]
        elif name == "ConfbridgeJoin" and p.transfer and chan in self.channels:
            return "conference", "rule_transfer=on", [evidence(event)]
        elif name == "Newchannel" and p.transfer and chan not in self.channels:
            # a new channel linked to a bridged inmate call: someone is dialing out of it
            return "conference", "linked_channels_max=2", [evidence(event)]
        elif name in ("ChannelTalkingStart", "ChannelTalkingStop"):
            self._talk(event, now)
        elif (name == "DTMFEnd" and p.extra_digits and chan in self.channels and chan != self.inmate
              and event.get("Direction") == "Received"):
            self.digits.append((now, evidence(event)))
            while self.digits and now - self.digits[0][0] > p.digits_window_s:
                self.digits.popleft()
            if len(self.digits) > p.digits_max:
                return ("extra_digits", f"digits_max={p.digits_max} in digits_window_s={p.digits_window_s}",
                        [e for _, e in self.digits])
        return None

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
        for since, ev in self.holds.values():
            if p.hold and now - since >= p.hold_grace_s:
                return self._cut("hold", f"hold_grace_s={p.hold_grace_s}", [ev], wall_ms), []
        if p.silence and not self.talking and now - self.quiet_since >= p.silence_s:
            evs = [self.quiet_event] if self.quiet_event else []
            return self._cut("silence", f"silence_s={p.silence_s}", evs, wall_ms), []
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
               if w not in self.warned and w * 1000 < self.limit_ms and wall_ms >= deadline - w * 1000]
        self.warned.update(due)
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
            self.warned.update(w for w in self.policy.warn_before_s if wall_ms > deadline - w * 1000)

    def _cut(self, reason: str, threshold: str, events: list[dict], at_ms: int | None = None) -> Cut:
        self.cut = Cut(reason, threshold, tuple(events[-MAX_EVIDENCE:]),
                       int(time.time() * 1000) if at_ms is None else at_ms)
        return self.cut


def _int(v: Any) -> int:
    try:
        return int(str(v))
    except ValueError:
        return 0
