"""Tell the inmate why the call did not connect (runs on the inmate channel after Dial)."""

from __future__ import annotations

from ics import records

from ..session import Session
from .callee import CALL_ID_RE

PROMPTS = {"NOANSWER": "no-answer", "BUSY": "busy", "CONGESTION": "busy", "CHANUNAVAIL": "busy"}


def run(s: Session) -> None:
    call_id, dialstatus = (s.args + ["", ""])[:2]
    if not CALL_ID_RE.match(call_id):
        return
    rec = records.get(s.r, call_id) or {}
    if rec.get("bridged_ms"):
        return  # a bridged call ended normally: nothing to explain
    s.play(PROMPTS.get(dialstatus, "not-accepted"))
