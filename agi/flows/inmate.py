"""Inmate side: who is calling, may they call this number, who pays, then dial.

Runs on the inmate's channel from [ics-inmate]. Every refusal plays its own
prompt and records one reason code; only when every check passes does it set
ICS_RESULT=dial for the dialplan, with the first minute's funds held.
Money is integer cents; the rate, tax, hold and limit all come from ics.rating.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from ami.rules import AUDIO_RULES
from ics import capacity, config, destination, metrics, policy, prompts, rating, records
from ics.destination import Destination, NumberError
from ics.store import Account, AccountExpired, now_ms

from .. import channelvars as V
from ..session import Session

log = structlog.get_logger("agi")

DIGIT_TIMEOUT_MS = 6000
PAY_CHOICE_TIMEOUT_MS = 3000  # no key: the called party's account pays (collect / prepaid)
PAY_FROM_DEBIT = "1"
NAME_MAX_MS = 4000


class Refused(Exception):
    def __init__(self, reason: str, prompt: str):
        super().__init__(reason)
        self.reason = reason
        self.prompt = prompt


def run(s: Session) -> None:
    fid = s.agi.get_variable(V.FACILITY)
    facility = s.store.facility(fid) if fid else None
    if facility is None:
        # A phone without a facility is a provisioning fault: fail closed.
        raise LookupError(f"inmate phone has no known facility (ICS_FACILITY={fid!r})")

    d = dialled(s.env.get("agi_extension", ""))
    call_id = records.new_call_id()
    structlog.contextvars.bind_contextvars(call_id=call_id)
    records.create(s.r, call_id, facility=fid, number=d.e164 if d else destination.INVALID,
                   dest_kind=d.kind if d else destination.INVALID, dest_region=d.region if d else None,
                   channel=s.env.get("agi_channel", ""), uniqueid=s.env.get("agi_uniqueid", ""),
                   node=s.cfg["node"]["id"], outcome="pin")
    # The handset's caller ID is untrusted text: it is stored and echoed to the
    # channel (CDRs) only through the quoting protocol layer.
    station = s.env.get("agi_calleridname", "")
    records.update(s.r, call_id, station=station)
    s.agi.set_variable(V.CALL_ID, call_id)
    s.agi.set_variable(V.STATION, station)
    s.agi.set_variable(V.RESULT, "refused")
    s.set_language(facility["language"])  # until the inmate is known
    log.info("call.start", facility=fid, number=d.e164 if d else destination.INVALID,
             kind=d.kind if d else destination.INVALID, region=d.region if d else None)
    s.agi.answer()

    try:
        line = special_line(s, facility, d)
        if d is not None and d.kind == destination.EMERGENCY:
            # someone dialling 911 is told at once where help is, not asked for a PIN first
            raise destination_refused(d, facility)
        check_capacity(s, "start")  # all lines busy: said before the inmate keys in a PIN
        inmate_id = identify(s, facility)
        checks_from = time.perf_counter()  # set-up latency: ours from here to the dial, the caller's keys excluded
        records.update(s.r, call_id, inmate=inmate_id, outcome="checks")
        inmate = s.store.inmate(inmate_id)
        s.set_language(inmate.get("language") or facility["language"])
        go = check_call(s, facility, inmate_id, inmate, d, call_id, line)
        # first use: only an inmate whose call may go ahead records a name (never one
        # who is then refused); the first minute is held meanwhile, released if they hang up
        if inmate.get("name_recorded") != "1":
            naming = time.perf_counter()
            record_name(s, inmate_id)
            checks_from += time.perf_counter() - naming  # the caller speaking is not set-up
        # again right before the dial (lines fill while the inmate keys in), admitting the call:
        # it counts from here on (the first minute's hold is released by settlement if refused)
        check_capacity(s, "dial", admit=s.env.get("agi_uniqueid") or call_id)
    except Refused as refusal:
        records.set_reason(s.r, call_id, refusal.reason)
        records.update(s.r, call_id, outcome="refused")
        log.info("call.refused", reason=refusal.reason)
        s.play(refusal.prompt)
        return

    limit_ms, held = go.limit_ms, go.held_cents
    # An attorney's number is never recorded or monitored, nor a line the facility marks so;
    # every other call is.
    privileged = s.store.privileged(d) is not None
    recorded = not privileged and (line is None or line.recorded)
    recording = recording_name(facility, inmate_id, call_id) if recorded else ""
    called_lang = s.store.called_language(d, facility)
    records.update(s.r, call_id, account=go.account, rate_cents=go.rate_cents, tax_bps=go.tax_bps,
                   dest_class=go.dest_class, limit_s=limit_ms // 1000, held_cents=held, outcome="dialing",
                   unit=inmate.get("unit") or None,
                   privileged="1" if privileged else "0", recording=recording or None,
                   inmate_language=s.lang, called_language=called_lang)
    if line is not None:
        record_line(s, call_id, line, d, recorded)
    s.agi.set_variable(V.CALLEE_PROMPTS, prompts.prompts_dir(called_lang))
    # digits only (a Destination's): nothing dialled can add a Dial target with "&"
    s.agi.set_variable(V.DIAL, dial_string(s.cfg["dial"]["template"], d))
    s.agi.set_variable(V.RING_S, s.cfg["dial"]["ring_timeout_s"])
    # The AMI listener ends the call at limit_ms with a prompt; Dial's L() is the
    # backstop should the listener be down, and settlement never bills past limit_ms.
    dial_limit_ms = limit_ms + rating.BACKSTOP_MS
    s.agi.set_variable(V.LIMIT_MS, dial_limit_ms)
    s.agi.set_variable(V.NOTICE, notice_options(facility["notice_interval_s"], dial_limit_ms))
    # The called party sees the facility, never the handset's own caller ID.
    s.agi.set_variable("CALLERID(name)", facility["name"][:CALLER_NAME_MAX])
    s.agi.set_variable("CALLERID(num)", destination.parse(facility["caller_id"]).dial
                       if facility["caller_id"] else "anonymous")
    metrics.SETUP.observe(time.perf_counter() - checks_from)
    log.info("call.dialing", limit_s=limit_ms // 1000, held_cents=held, account=go.account,
             dest_class=go.dest_class, rate_cents=go.rate_cents)
    s.play("please-hold")
    s.agi.set_variable(V.RESULT, "dial")


CALLER_NAME_MAX = 40


def dialled(extension: str) -> Destination | None:
    """What the inmate dialled (Asterisk's extension, any text); None for text that is no
    number, which is refused as invalid_number with its prompt, never an error (silence)."""
    try:
        return destination.parse(extension)
    except NumberError:
        return None


def destination_refused(d: Destination | None, facility: dict) -> Refused | None:
    """The refusal, with its prompt, of a destination by its kind alone (or None)."""
    if d is None:
        return Refused("invalid_number", "invalid-number")
    reason = policy.destination_refusal(d)
    if reason is None:
        return None
    if reason == "emergency_not_allowed" and facility["emergency_routed"]:
        return Refused(reason, "emergency-routed")
    return Refused(reason, reason.replace("_", "-"))


def dial_string(template: str, d: Destination) -> str:
    """ICS_DIAL: {number} the digits as dialled from the US, {e164} +E.164 (dial.template)."""
    return template.format(number=d.dial, e164=d.e164)


def recording_name(facility: dict, inmate_id: str, call_id: str) -> str:
    """Where MixMonitor files the call, relative to Asterisk's monitor directory:
    ics/<facility>/<inmate>/<YYYY-MM-DD facility time>/<call id>.wav."""
    day = policy.local_date(now_ms(), facility["timezone"])
    return f"ics/{facility['id']}/{inmate_id}/{day}/{call_id}.wav"


def notice_options(interval_s: int, limit_ms: int) -> str:
    """Dial L() warning fields for the periodic facility notice: the first after one
    interval, then every interval (L(limit:warn:repeat), warn = ms left at the first)."""
    interval_ms = interval_s * 1000
    if not interval_ms or interval_ms >= limit_ms:
        return ""
    return f":{limit_ms - interval_ms}:{interval_ms}"


def listener_down() -> Refused:
    """The AMI listener's heartbeat (or its live count) is missing: no call is placed."""
    log.warning("call.listener_down")
    return Refused("system_unavailable", "system-error")


def check_capacity(s: Session, at: str, admit: str = "") -> None:
    """Admission control (ics.capacity): refused while capacity.max_calls calls are live or
    being placed, rather than degrading every call on the box. With admit (the inmate
    channel's Uniqueid) the call is admitted in the same atomic step. No count (the AMI
    listener is away): before the PIN the flow goes on to its listener check, which refuses
    (system_unavailable); at the dial it refuses the same way. Redis away raises: [ics-fail]."""
    max_calls = s.cfg["capacity"]["max_calls"]
    load = capacity.check(s.r, max_calls, admit, s.cfg["node"]["id"])
    if load.room is None and admit:
        raise listener_down()
    if load.room is False:
        log.warning("call.capacity_full", live=load.live, setting_up=load.setting_up, max_calls=max_calls, at=at)
        raise Refused("capacity_full", "all-lines-busy")


def identify(s: Session, facility: dict) -> str:
    """Inmate number then PIN; three wrong tries end the call, repeated failures lock the PIN."""
    for _ in range(facility["pin_max_tries"]):
        inmate_id, _ = s.agi.read_digits(s.sound("enter-inmate-id"), DIGIT_TIMEOUT_MS, 10)
        pin, _ = s.agi.read_digits(s.sound("enter-pin"), DIGIT_TIMEOUT_MS, 8)
        inmate = s.store.inmate(inmate_id) if inmate_id else None
        if inmate and inmate.get("facility") == facility["id"]:
            if inmate.get("pin_locked") == "1":
                log.warning("call.pin_locked", inmate=inmate_id)
                raise Refused("pin_locked", "pin-locked")
            if s.store.check_pin(inmate, pin):
                s.store.pin_ok(inmate_id)
                structlog.contextvars.bind_contextvars(inmate=inmate_id)
                log.info("call.pin_ok")
                return inmate_id
            if s.store.pin_failed(inmate_id, facility["pin_lock_after"]):
                log.warning("call.pin_locked", inmate=inmate_id)
                raise Refused("pin_locked", "pin-locked")
        log.info("call.pin_failed", inmate=inmate_id if inmate else None)
        s.play("pin-invalid")
    raise Refused("pin_invalid", "pin-too-many")


def record_name(s: Session, inmate_id: str) -> None:
    """First use: the inmate records the name the called party will hear."""
    s.play("record-name")
    s.agi.record(prompts.name_sound(inmate_id), "wav", NAME_MAX_MS)
    s.store.set_name_recorded(inmate_id)
    log.info("call.name_recorded")


@dataclass(frozen=True)
class Go:
    """Everything a call that may dial carries: who pays, at what rate, what is held (cents)."""
    account: str
    held_cents: int
    limit_ms: int
    rate_cents: int
    tax_bps: int
    dest_class: str


@dataclass(frozen=True)
class Line:
    """A destination the facility treats apart (config relay_numbers, icsctl numbers set):
    relay (TRS, 711: 47 CFR 64.6040), a family TTY, or a free line (PREA, public defender)."""
    kind: str            # relay | tty | free
    free: bool           # never billed: rate 0, nothing held, no account needed
    recorded: bool
    rules_off: bool      # the audio rules (silence, digits, tones) would cut a TTY's normal call
    listed: bool         # allowed whatever the approved list, blocks and number type say
    anytime: bool        # outside schedules and weekly quotas


RULES_OFF_WHY = {
    "relay": "relay call (47 CFR 64.6040): TTY tones and long silences are normal",
    "tty": "TTY number: Baudot tones and long silences are normal",
}


def special_line(s: Session, facility: dict, d: Destination | None) -> Line | None:
    if d is None:
        return None
    if d.e164 in config.relay_numbers(facility["relay_numbers"]):
        return Line("relay", free=True, recorded=facility["relay_recorded"], rules_off=True, listed=True,
                    anytime=True)
    if d.short:
        return None  # numinfo is kept for whole numbers only
    info = s.store.number_info(d)
    if info.get("free") == "1":
        return Line("free", free=True, recorded=info.get("unrecorded") != "1", rules_off=info.get("tty") == "1",
                    listed=True, anytime=facility["free_lines_anytime"])
    if info.get("tty") == "1":
        return Line("tty", free=facility["tty_rate_cents"] == 0, recorded=info.get("unrecorded") != "1",
                    rules_off=True, listed=False, anytime=False)
    if info.get("unrecorded") == "1":
        return Line("unrecorded", free=False, recorded=False, rules_off=False, listed=False, anytime=False)
    return None


def record_line(s: Session, call_id: str, line: Line, d: Destination, recorded: bool) -> None:
    """On the record (and, for a free line, the audit stream, without any content): what kind of
    line, whether it is recorded, and which rules are off and why."""
    fields = {"line": line.kind, "free": "1" if line.free else "0", "anytime": "1" if line.anytime else "0"}
    if line.rules_off:
        fields.update(rules_off=",".join(sorted(AUDIO_RULES)), rules_off_why=RULES_OFF_WHY.get(line.kind, line.kind))
    records.update(s.r, call_id, **fields)
    if line.free or not recorded:
        s.store.audit(f"{line.kind}_call", "call-flow", call_id,
                      f"number={d.e164} free={int(line.free)} recorded={int(recorded)}")
    log.info("call.special_line", line=line.kind, free=line.free, recorded=recorded, rules_off=line.rules_off)


def check_policy(s: Session, facility: dict, inmate_id: str, inmate: dict, number: Destination | None,
                 line: Line | None = None) -> int:
    """Facility policy before any money: status, lockdown, schedule, destination, the
    approved list and blocks, the weekly quota. Returns the time limit (s) the quota
    leaves, at most the facility's. A relay or free line (Line.listed) is allowed whatever
    the list, blocks and number type say; with Line.anytime, outside schedules and quotas."""
    status = inmate.get("status") or "active"
    if status == "suspended":
        raise Refused("inmate_suspended", "inmate-suspended")
    lockdown = s.store.lockdown_for(facility["id"], inmate.get("unit", ""))
    if lockdown:
        log.info("call.lockdown", scope=lockdown["scope"])
        raise Refused("lockdown", "lockdown")
    now = now_ms()
    anytime = line is not None and line.anytime
    if not anytime and not s.store.schedule_for(facility, inmate).allows(policy.local_time(now, facility["timezone"])):
        raise Refused("outside_schedule", "outside-schedule")
    if line is not None and line.listed:
        return facility["time_limit_s"]
    refused = destination_refused(number, facility)
    if refused:
        raise refused
    state = s.store.number_state(inmate_id, number)
    if state == "pending":
        raise Refused("approval_pending", "approval-pending")
    if state != "approved":
        raise Refused("not_approved", "not-approved")
    blocked = s.store.block_reason(inmate_id, facility["id"], number)
    if blocked:
        raise Refused(blocked, blocked.replace("_", "-"))
    limit_s = facility["time_limit_s"]
    if status == "restricted" and not anytime:
        calls, minutes = s.store.week_usage(inmate_id, policy.week_of(now, facility["timezone"]))
        max_calls = int(inmate.get("quota_calls_week") or 0)
        max_minutes = int(inmate.get("quota_minutes_week") or 0)
        if (max_calls and calls >= max_calls) or (max_minutes and minutes >= max_minutes):
            log.info("call.quota_exhausted", calls=calls, minutes=minutes)
            raise Refused("quota_exhausted", "quota-exhausted")
        if max_minutes:
            limit_s = min(limit_s, (max_minutes - minutes) * 60)
    return limit_s


def check_call(s: Session, facility: dict, inmate_id: str, inmate: dict, number: Destination | None,
               call_id: str, line: Line | None = None) -> Go:
    """Policy (check_policy), destination class and rate, who pays; holds the
    first minute (tax included). A free line holds nothing and bills nothing. Any Redis
    error raises: no call."""
    limit_s = check_policy(s, facility, inmate_id, inmate, number, line)
    if not s.store.listener_alive():
        # fail closed: with the listener down nothing would cut a transfer, a three-way call
        # or hold the next minute; the caller is told, nothing is held
        raise listener_down()
    if line is not None and line.free:
        return Go("", 0, limit_s * 1000, 0, 0, line.kind)
    dest_class, rate = rating.rate_for(facility, number)
    if rate is None:  # a country the facility does not list
        raise Refused("international_not_allowed", "international-not-allowed")
    if line is not None and line.kind == "tty":  # TTY-to-TTY: at most the facility's TTY rate
        rate = min(rate, facility["tty_rate_cents"])
    tax = facility["tax_bps"]
    one_minute = rating.price(rate, rating.MINUTE_MS, tax).cents

    account = None
    debit = s.store.debit_account(inmate_id)
    if debit is not None and debit.available_cents >= one_minute and choose_debit(s):
        account = debit
    if account is None:
        try:
            account = payer_for(s, number)
        except Refused as refusal:
            # nobody can pay: the facility may offer the number one short free call, once
            courtesy = facility["courtesy_call_s"]
            if refusal.reason != "needs_prepaid" or not courtesy or not s.store.take_courtesy(number, call_id):
                raise
            log.info("call.courtesy", seconds=min(courtesy, limit_s))
            records.update(s.r, call_id, line="courtesy", free="1")
            return Go("", 0, min(courtesy, limit_s) * 1000, 0, 0, "courtesy")
    for _ in range(2):  # a concurrent call on the same account may take funds in between
        limit_ms = rating.time_limit_ms(limit_s, account.available_cents, rate, tax)
        if limit_ms < rating.MINUTE_MS:
            break
        # Only the first minute is held now; the AMI listener holds each next one
        # before it starts, so calls sharing an account draw on it minute by minute.
        # The hold script also refuses an account flagged expired.
        try:
            if s.store.reserve(account.id, call_id, one_minute, minutes=1):
                return Go(account.id, one_minute, limit_ms, rate, tax, dest_class)
        except AccountExpired:
            metrics.HOLDS_REFUSED.labels("first").inc()
            raise Refused("account_expired", "account-expired") from None
        account = s.store.account(account.id)
        if account is None:
            raise LookupError("the paying account vanished while the call was checked")
    metrics.HOLDS_REFUSED.labels("first").inc()
    if s.store.account_usable(account) == "account_expired":  # too little to try a hold, and expired
        raise Refused("account_expired", "account-expired")
    if account.type == "direct_bill":
        raise Refused("direct_bill_limit", "direct-bill-limit")
    raise Refused("insufficient_funds", "insufficient-funds")


def choose_debit(s: Session) -> bool:
    """The inmate has funds of their own: one short read, 1 = pay from them, else collect."""
    digit, _ = s.agi.read_digits(s.sound("pay-choice"), PAY_CHOICE_TIMEOUT_MS, 1)
    chosen = digit == PAY_FROM_DEBIT
    log.info("call.pay_choice", digit=digit or None, payer="inmate_debit" if chosen else "called_party")
    return chosen


def payer_for(s: Session, number: Destination) -> Account:
    """The called party's account, if the number can be billed; else needs_prepaid.

    A prepaid account pays for any line. Direct bill (collect to a landline) needs the
    LIDB record to allow it at call time too: a landline with no collect block and no
    new-number restriction (a number not in the table has the line type its number type
    says: a mobile number is wireless; US numbers, which do not say, count as landlines). No
    account at all is needs_prepaid too (it replaced no_account)."""
    account = s.store.account_for_number(number)
    if account is None:
        raise Refused("needs_prepaid", "needs-prepaid")
    if account.type == "direct_bill":
        problem = s.store.collect_problem(number)
        if problem:
            log.info("call.not_billable", why=problem)
            raise Refused("needs_prepaid", "needs-prepaid")
    elif account.type != "prepaid":
        raise LookupError(f"number {number} maps to a {account.type} account")
    return account
