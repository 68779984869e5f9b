"""Settlement: the one path that always runs when an inmate call ends.

Called from the inmate channel's hangup handler ([ics-settle]) with
(call id, DIALSTATUS, CHANNEL(hangupsource)). Decides the reason code if the
flow did not, bills only bridged time at the rate the call was quoted, releases
the hold, and marks the call settled. Running it twice changes nothing.
"""

from __future__ import annotations

import structlog

from ics import rating, records
from ics.store import now_ms

from ..session import Session
from .callee import CALL_ID_RE

log = structlog.get_logger("agi")

DIAL_REASONS = {"NOANSWER": "no_answer", "BUSY": "busy", "CONGESTION": "busy",
                "CHANUNAVAIL": "busy", "CANCEL": "inmate_hangup_before_accept"}


def run(s: Session) -> None:
    call_id, dialstatus, hangupsource = (s.args + ["", "", ""])[:3]
    if not CALL_ID_RE.match(call_id):
        log.warning("call.settle_skipped", why="no call id: the call ended before the flow began")
        return
    structlog.contextvars.bind_contextvars(call_id=call_id)
    settle(s, call_id, dialstatus, hangupsource, s.env.get("agi_channel", ""))


def settle(s: Session, call_id: str, dialstatus: str, hangupsource: str, inmate_channel: str) -> None:
    rec = records.get(s.r, call_id)
    if rec is None:
        raise LookupError(f"no call record {call_id}")
    records.mark_ended(s.r, call_id, now_ms())
    rec = records.get(s.r, call_id)
    ended = rec["ended_ms"]
    bridged = rec.get("bridged_ms")
    rate = rec.get("rate_cents", 0)

    inmate_hung_up = bool(hangupsource) and hangupsource == inmate_channel
    if bridged:
        duration = max(0, ended - bridged)
        if duration >= rec.get("limit_s", 0) * 1000 - 1000:
            reason = "time_limit"
        else:
            reason = "inmate_hangup" if inmate_hung_up else "called_hangup"
        bill = rating.price(rate, duration)
    else:
        duration = 0
        if rec.get("outcome") == "announcing":
            reason = "inmate_hangup_before_accept" if inmate_hung_up else "called_hangup_before_accept"
        elif rec.get("outcome") == "dialing":
            reason = DIAL_REASONS.get(dialstatus, "busy" if dialstatus else "inmate_abandoned")
        else:
            reason = "inmate_abandoned"
        bill = rating.Price(0, 0)
    records.set_reason(s.r, call_id, reason)
    first, cents, minutes = s.store.settle(call_id, rec.get("account", ""), bill.cents, bill.minutes, rate)
    rec = records.get(s.r, call_id)
    if first:
        log.info("call.settled", reason=rec.get("reason"), bridged_ms=duration,
                 billed_minutes=minutes, billed_cents=cents)
    else:
        log.info("call.settle_skipped", why="already settled", billed_cents=cents)
