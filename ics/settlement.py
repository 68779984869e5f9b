"""Settle one call: decide its reason code and bill only bridged time. Idempotent.

Called from the inmate channel's hangup handler (agi/flows/settle.py) and, as
a safety net, by the AMI listener for a hung-up call that was never settled.
Once the money is settled, the call's recording is checked against its bridged
time here too (ics.recordings): this is the one path every call takes.
"""

from __future__ import annotations

import structlog

from . import metrics, policy, rating, recordings, records
from .store import Store, now_ms

log = structlog.get_logger("ics")

DIAL_REASONS = {"NOANSWER": "no_answer", "BUSY": "busy", "CONGESTION": "busy",
                "CHANUNAVAIL": "busy", "CANCEL": "inmate_hangup_before_accept"}

# Q.850 hang-up causes that mean the network or the system failed, not a party: a bridged
# call ended with one of them is a system drop (system_error, auto credit per the rule).
SYSTEM_DROP_CAUSES = {
    27: "destination out of order", 34: "no circuit/channel available", 38: "network out of order",
    41: "temporary failure", 42: "switching equipment congestion", 47: "resource unavailable",
}
# Asterisk's backstops (the called leg's TIMEOUT(absolute), Dial's L()) fire rating.BACKSTOP_MS
# after the paid time, rounded up to a whole second: a call nobody cut that ended within this
# much of that moment was ended by them
BACKSTOP_SLACK_MS = 3000
# ICS_FAULT values the dialplan sets on both legs (agi/channelvars.py): the system
# failed before the bridge. The call was never bridged (the gosub's fault branch says CONTINUE,
# whatever the flow recorded), so a system drop billed nothing.
FAULTS = {"menu": "the called-party menu (AGI callee) ended abnormally"}


def fault_threshold(fault: str) -> str:
    return f"fault={fault}"


def fault_evidence(fault: str, at_ms: int, channel: str = "") -> dict:
    return {"event": "MenuFault", "time": f"{at_ms / 1000:.3f}", "channel": channel, "ICS_FAULT": fault,
            "why": FAULTS.get(fault, "the call flow ended abnormally")}


def record_fault(r, call_id: str, fault: str, at_ms: int, channel: str = "") -> bool:
    """A fault of the call flow (ICS_FAULT), seen by the hangup handler: a system drop
    (system_error) with a MenuFault event as its evidence. The AMI listener records the same
    from the first leg's Hangup event that carries it (ami/listener.py on_hangup)."""
    return records.record_system_drop(r, call_id, fault_threshold(fault), at_ms,
                                      [fault_evidence(fault, at_ms, channel)])


def faulted(rec: dict) -> bool:
    """The record says the call flow failed before the bridge (record_fault)."""
    return rec.get("reason") == "system_error" and str(rec.get("rule_threshold", "")).startswith("fault=")


def system_drop_cause(hangupcause: str) -> int | None:
    cause = int(hangupcause) if str(hangupcause).isdigit() else 0
    return cause if cause in SYSTEM_DROP_CAUSES else None


def settle(store: Store, call_id: str, dialstatus: str = "", hangupsource: str = "",
           inmate_channel: str = "", hangupcause: str = "", fault: str = "",
           ended_ms: int | None = None) -> dict:
    r = store.r
    rec = records.get(r, call_id)
    if rec is None:
        raise LookupError(f"no call record {call_id}")
    records.mark_ended(r, call_id, end_time(rec, ended_ms))
    rec = records.get(r, call_id)
    if fault and rec.get("settled") != "1":
        record_fault(r, call_id, fault, rec["ended_ms"], inmate_channel)
        rec = records.get(r, call_id)
    bridged = None if faulted(rec) else rec.get("bridged_ms")
    rate = rec.get("rate_cents", 0)
    inmate_hung_up = bool(hangupsource) and hangupsource == inmate_channel
    cause = system_drop_cause(hangupcause)
    if bridged and cause and rec.get("settled") != "1":
        records.record_system_drop(r, call_id, f"hangupcause={cause}", rec["ended_ms"], [
            {"event": "HangupCause", "time": f"{rec['ended_ms'] / 1000:.3f}", "channel": inmate_channel,
             "Cause": str(cause), "Cause-txt": SYSTEM_DROP_CAUSES[cause]}])
        rec = records.get(r, call_id)

    if bridged:
        # Billing stops when a rule fired (the parties then hear why, free), and never
        # runs past the limit the call was sold nor the minutes held for it (Asterisk's
        # backstops end an unwatched call a little later: that overrun is not billed).
        end = min(rec["ended_ms"], rec.get("cut_ms") or rec["ended_ms"])
        # the minutes held as the account's slot has them (the call record's copy may lag: sync_call)
        rec["paid_minutes"] = store.call_money(rec.get("account", ""), call_id).get("paid_minutes",
                                                                                 rec.get("paid_minutes", 0))
        caps = [ms for ms in (rec.get("limit_s", 0) * 1000, rec["paid_minutes"] * rating.MINUTE_MS) if ms]
        duration = min([max(0, end - bridged), *caps])
        ran = rec["ended_ms"] - bridged
        if caps and not rec.get("cut_ms") and abs(ran - min(caps) - rating.BACKSTOP_MS) <= BACKSTOP_SLACK_MS:
            # nobody cut it (the listener was down): Asterisk's backstop ended it past the paid time
            reason = "time_limit"
            records.record_cut(r, call_id, reason, _backstop_threshold(rec, min(caps)), bridged + min(caps), [
                {"event": "Backstop", "time": f"{rec['ended_ms'] / 1000:.3f}", "channel": rec.get("channel", ""),
                 "bridged_ms": str(bridged), "ended_ms": str(rec["ended_ms"])}])
        elif caps and duration >= min(caps) - 1000 and ran <= min(caps) + rating.BACKSTOP_MS + BACKSTOP_SLACK_MS:
            reason = "time_limit"
        else:
            # (a bridge that ran past every backstop was still ended by a party: said so, billed to the cap)
            reason = "inmate_hangup" if inmate_hung_up else "called_hangup"
        bill = rating.price(rate, duration, rec.get("tax_bps", 0))  # the same price the hold was
    else:
        duration = 0
        if rec.get("outcome") in ("announcing", "accepted"):  # accepted: hung up before the bridge
            reason = "inmate_hangup_before_accept" if inmate_hung_up else "called_hangup_before_accept"
        elif rec.get("outcome") == "dialing":
            reason = DIAL_REASONS.get(dialstatus, "busy" if dialstatus else "inmate_abandoned")
        else:
            reason = "inmate_abandoned"
        bill = rating.Price(0, 0)
    records.set_reason(r, call_id, reason)
    if not bridged and rec.get("line") == "courtesy":  # never talked: the free call is not used up
        store.give_back_courtesy(rec.get("number", ""), call_id)
    week = None
    if bridged and rec.get("inmate") and rec.get("anytime") != "1":  # a relay or free line: outside quotas
        # weekly quotas count accepted calls and billed minutes, in the facility's week,
        # in the settle script itself: once, with the charge
        fac = store.facility(rec.get("facility", ""))
        week = (rec["inmate"], policy.week_of(rec.get("started_ms") or now_ms(), fac["timezone"] if fac else "UTC"))
    first, cents, minutes = store.settle(call_id, rec.get("account", ""), bill.cents, bill.minutes, rate,
                                         bill.tax_cents, week)
    credited = store.auto_credit(call_id)  # system_error in the first minute: credited in full, once
    rec = records.get(r, call_id)
    if first:
        metrics.CALLS.labels(rec.get("outcome") or "", rec.get("reason") or "").inc()
        log.info("call.settled", call_id=call_id, reason=rec.get("reason"), bridged_ms=duration,
                 billed_minutes=minutes, billed_cents=cents)
    else:
        log.info("call.settle_skipped", call_id=call_id, why="already settled", billed_cents=cents)
    if credited:
        log.info("call.auto_credited", call_id=call_id, credited_cents=credited)
    check_recording(store, call_id)
    return records.get(r, call_id)


def check_recording(store: Store, call_id: str) -> None:
    """The recording against the bridge (ics.recordings), once, after the money: its wait for
    Asterisk to close the file never holds up the bill. A failure leaves the call pending for
    the listener, never fails the settlement."""
    try:
        recordings.check(store, call_id)
    except Exception as exc:
        log.error("recording.check_failed", call_id=call_id, error=repr(exc))


def end_time(rec: dict, stamped: int | None) -> int:
    """When the call ended: Asterisk's own stamp (taken as the hangup handler starts, the moment the
    call ended: dialplan/extensions.conf [ics-settle]) when it is believable, else now. The settle AGI runs later than the hang-up, by seconds under
    load or while FastAGI is stalled, and that wait must never be billed."""
    now = now_ms()
    if stamped is None:
        return now
    if (rec.get("bridged_ms") or rec.get("started_ms") or 0) <= stamped <= now:
        return stamped
    log.warning("call.end_stamp_ignored", call_id=rec.get("call_id"), stamped_ms=stamped, now_ms=now,
                bridged_ms=rec.get("bridged_ms"))
    return now


def _backstop_threshold(rec: dict, cap_ms: int) -> str:
    """Which of Asterisk's backstops ended an unwatched call: the paid minutes' TIMEOUT(absolute)
    on the called leg, or Dial's L() at the call's limit."""
    paid = rec.get("paid_minutes", 0)
    which = f"paid_minutes={paid}" if paid and paid * rating.MINUTE_MS == cap_ms else f"limit_s={rec.get('limit_s', 0)}"
    return f"backstop {which} +{rating.BACKSTOP_MS // 1000}s"
