"""Settlement route: the hangup handler ([ics-settle]) of every inmate call.

Arguments: call id, DIALSTATUS, CHANNEL(hangupsource), HANGUPCAUSE, ICS_FAULT (the
called-party menu ended abnormally: system_error), and Asterisk's clock in epoch ms as the
handler started, the moment the call ended (the bill stops there). The work is in
ics.settlement, shared with the AMI listener's safety net.
"""

from __future__ import annotations

import structlog

from ics import settlement

from ..session import Session
from .callee import CALL_ID_RE

log = structlog.get_logger("agi")


def run(s: Session) -> None:
    call_id, dialstatus, hangupsource, hangupcause, fault, ended = (s.args + [""] * 6)[:6]
    if not CALL_ID_RE.match(call_id):
        log.warning("call.settle_skipped", why="no call id: the call ended before the flow began")
        return
    structlog.contextvars.bind_contextvars(call_id=call_id)
    settlement.settle(s.store, call_id, dialstatus, hangupsource, s.env.get("agi_channel", ""), hangupcause,
                      fault, ended_ms=int(ended) if ended.isdigit() else None)
