"""Inmate side: who is calling, may they call this number, who pays, then dial.

Runs on the inmate's channel from [ics-inmate]. Every refusal plays its own
prompt and records one reason code; only when every check passes does it set
ICS_RESULT=dial for the dialplan, with funds for the whole time limit held.
"""

from __future__ import annotations

import structlog

from ics import prompts, rating, records
from ics.store import valid_number

from .. import channelvars as V
from ..session import Session

log = structlog.get_logger("agi")

DIGIT_TIMEOUT_MS = 6000
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

    number = s.env.get("agi_extension", "")
    call_id = records.new_call_id()
    structlog.contextvars.bind_contextvars(call_id=call_id)
    records.create(s.r, call_id, facility=fid, number=number if valid_number(number) else "invalid",
                   channel=s.env.get("agi_channel", ""), uniqueid=s.env.get("agi_uniqueid", ""),
                   outcome="pin")
    # The handset's caller ID is untrusted text: it is stored and echoed to the
    # channel (CDRs) only through the quoting protocol layer.
    station = s.env.get("agi_calleridname", "")
    records.update(s.r, call_id, station=station)
    s.agi.set_variable(V.CALL_ID, call_id)
    s.agi.set_variable(V.STATION, station)
    s.agi.set_variable(V.RESULT, "refused")
    log.info("call.start", facility=fid, number=number)
    s.agi.answer()

    try:
        inmate_id = identify(s, facility)
        records.update(s.r, call_id, inmate=inmate_id, outcome="checks")
        inmate = s.store.inmate(inmate_id)
        if inmate.get("name_recorded") != "1":
            record_name(s, inmate_id)
        account, held, limit_ms = check_call(s, facility, inmate_id, number, call_id)
    except Refused as refusal:
        records.set_reason(s.r, call_id, refusal.reason)
        records.update(s.r, call_id, outcome="refused")
        log.info("call.refused", reason=refusal.reason)
        s.play(refusal.prompt)
        return

    records.update(s.r, call_id, account=account, rate_cents=facility["rate_cents_per_min"],
                   limit_s=limit_ms // 1000, held_cents=held, outcome="dialing")
    s.agi.set_variable(V.DIAL, s.cfg["dial"]["template"].format(number=number))
    s.agi.set_variable(V.RING_S, s.cfg["dial"]["ring_timeout_s"])
    s.agi.set_variable(V.LIMIT_MS, limit_ms)
    log.info("call.dialing", limit_s=limit_ms // 1000, held_cents=held)
    s.play("please-hold")
    s.agi.set_variable(V.RESULT, "dial")


def identify(s: Session, facility: dict) -> str:
    """Inmate number then PIN; three wrong tries end the call, repeated failures lock the PIN."""
    for _ in range(facility["pin_max_tries"]):
        inmate_id, _ = s.agi.read_digits(prompts.sound("enter-inmate-id"), DIGIT_TIMEOUT_MS, 10)
        pin, _ = s.agi.read_digits(prompts.sound("enter-pin"), DIGIT_TIMEOUT_MS, 8)
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


def check_call(s: Session, facility: dict, inmate_id: str, number: str, call_id: str):
    """Approved list, blocks, account; holds funds for the time limit. Returns (account, held, limit_ms)."""
    if not valid_number(number):
        raise Refused("invalid_number", "invalid-number")
    if not s.store.is_approved(inmate_id, number):
        raise Refused("not_approved", "not-approved")
    blocked = s.store.block_reason(inmate_id, facility["id"], number)
    if blocked:
        raise Refused(blocked, blocked.replace("_", "-"))
    rate = facility["rate_cents_per_min"]
    for _ in range(2):  # a concurrent call on the same account may take funds in between
        account = s.store.account_for_number(number)
        if account is None:
            raise Refused("no_account", "no-account")
        limit_ms = rating.time_limit_ms(facility["time_limit_s"], account.available_cents, rate)
        if limit_ms < rating.MINUTE_MS:
            raise Refused("insufficient_funds", "insufficient-funds")
        held = rating.price(rate, limit_ms).cents
        if s.store.reserve(account.id, call_id, held):
            return account.id, held, limit_ms
    raise Refused("insufficient_funds", "insufficient-funds")
