"""Settle one call: decide its reason code and bill only bridged time. Idempotent.

Called from the inmate channel's hangup handler (agi/flows/settle.py) and, as
a safety net, by the AMI listener for a hung-up call that was never settled.
"""

from __future__ import annotations

import structlog

from . import policy, rating, records
from .store import Store, now_ms

log = structlog.get_logger("ics")

DIAL_REASONS = {"NOANSWER": "no_answer", "BUSY": "busy", "CONGESTION": "busy",
                "CHANUNAVAIL": "busy", "CANCEL": "inmate_hangup_before_accept"}


def settle(store: Store, call_id: str, dialstatus: str = "", hangupsource: str = "",
           inmate_channel: str = "") -> dict:
    r = store.r
    if records.get(r, call_id) is None:
        raise LookupError(f"no call record {call_id}")
    records.mark_ended(r, call_id, now_ms())
    rec = records.get(r, call_id)
    bridged = rec.get("bridged_ms")
    rate = rec.get("rate_cents", 0)
    inmate_hung_up = bool(hangupsource) and hangupsource == inmate_channel

    if bridged:
        # Billing stops when a rule fired (the parties then hear why, free), and never
        # runs past the limit the call was sold nor the minutes held for it (Asterisk's
        # backstops end an unwatched call a little later: that overrun is not billed).
        end = min(rec["ended_ms"], rec.get("cut_ms") or rec["ended_ms"])
        caps = [ms for ms in (rec.get("limit_s", 0) * 1000, rec.get("paid_minutes", 0) * rating.MINUTE_MS) if ms]
        duration = min([max(0, end - bridged), *caps])
        if caps and duration >= min(caps) - 1000:
            reason = "time_limit"
        else:
            reason = "inmate_hangup" if inmate_hung_up else "called_hangup"
        bill = rating.price(rate, duration, rec.get("tax_bps", 0))  # the same price the hold was
    else:
        duration = 0
        if rec.get("outcome") == "announcing":
            reason = "inmate_hangup_before_accept" if inmate_hung_up else "called_hangup_before_accept"
        elif rec.get("outcome") == "dialing":
            reason = DIAL_REASONS.get(dialstatus, "busy" if dialstatus else "inmate_abandoned")
        else:
            reason = "inmate_abandoned"
        bill = rating.Price(0, 0)
    records.set_reason(r, call_id, reason)
    week = None
    if bridged and rec.get("inmate"):
        # weekly quotas count accepted calls and billed minutes, in the facility's week,
        # in the settle script itself: once, with the charge
        fac = store.facility(rec.get("facility", ""))
        week = (rec["inmate"], policy.week_of(rec.get("started_ms") or now_ms(), fac["timezone"] if fac else "UTC"))
    first, cents, minutes = store.settle(call_id, rec.get("account", ""), bill.cents, bill.minutes, rate,
                                         bill.tax_cents, week)
    credited = store.auto_credit(call_id)  # system_error in the first minute: credited in full, once
    rec = records.get(r, call_id)
    if first:
        log.info("call.settled", call_id=call_id, reason=rec.get("reason"), bridged_ms=duration,
                 billed_minutes=minutes, billed_cents=cents)
    else:
        log.info("call.settle_skipped", call_id=call_id, why="already settled", billed_cents=cents)
    if credited:
        log.info("call.auto_credited", call_id=call_id, credited_cents=credited)
    return rec
