"""The fault matrix's invariants: what every cell of tests/e2e/test_faults.py checks.

A cell kills one part of the stack (redis, fastagi, ami, asterisk) at one phase
of a call, brings it back, ends the call, then checks the same five things from
what Asterisk reported on AMI (the tap's receive time `_t`), the call record,
the ledger and the services' logs:

  free_talk     bridged time <= paid minutes x 60 s + rating.BACKSTOP_MS (+ TOLERANCE_MS), and
                each next minute held (ics-ami's enforce.minute_held) before the talk passed
                the previous one's end plus the backstop
  charged       nothing charged unless both legs were bridged, never more minutes than
                were bridged; a system drop (system_error) in its first minute credited in full
  settled       settled exactly once (one charge if billed, none if not; never two
                call.settled log lines),
                within SETTLE_S of the parts being back and the call over, ended_ms
                within TOLERANCE_MS of the real hang-up, with the expected reason
  refused       a call attempted while the part was down was refused with a spoken
                message (Asterisk's PLAYBACK test event of a refusal prompt on the
                handset's channel), and its called phone never rang; with Asterisk down
                the attempt fails at SIP level (the handset never gets 200)
  explained     a call the system dropped while Asterisk was up: both legs heard a closing
                prompt (system-error, or [ics-cut]'s when a rule or the time limit ended it)
  ledger        `icsctl ledger check` exits 0

`Cell.failures` lists each broken invariant with the values observed; the test
asserts it is empty and writes one JSON line per cell to .stack/log/faults.jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime

from ics import rating, records

from tests.support import REPO, admin_redis, stack_dir
from tests.support import services

COMPONENTS = ("redis", "fastagi", "ami", "asterisk")
PHASES = ("ringing", "announcement", "menu", "bridged", "paid_end", "settlement")
SETTLE_S = 10
TOLERANCE_MS = 2000   # AMI events are dated by the tap's receive time; a loaded 2-core box
# "the paid minute's end": killed half a second before the listener holds the next minute
# (ami.listener.RESERVE_AHEAD_MS, 10 s before the end), so the part is down when it is due;
# killed after the hold, the call would simply have two paid minutes and nothing to prove
PAID_END_KILL_S = 49.5
# prompts that refuse a call with a spoken message (dialplan [ics-fail], the flow's refusals)
REFUSAL_PROMPTS = ("ics/prompts/system-error",)


@dataclass
class Cell:
    component: str
    phase: str
    call_id: str = ""
    killed_at: float = 0.0            # epoch s
    back_at: float = 0.0              # epoch s: the part restarted and ready
    hangup_at: float | None = None    # epoch s: the first leg gone (AMI Hangup, or the Asterisk kill)
    bridged_at: float | None = None   # epoch s: the second leg entered the bridge
    bridge_end_at: float | None = None
    ended_by: str = ""                # test-inmate / test-family / system
    expected_reasons: tuple[str, ...] = ()
    probe: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    settled_at: float | None = None
    failures: list[str] = field(default_factory=list)

    def fail(self, invariant: str, text: str) -> None:
        self.failures.append(f"{invariant}: {text}")

    @property
    def bridged_ms(self) -> int:
        if self.bridged_at is None:
            return 0
        end = self.bridge_end_at or self.hangup_at or time.time()
        return max(0, int((end - self.bridged_at) * 1000))

    def summary(self) -> dict:
        rec = self.record
        return {"cell": f"{self.component}-{self.phase}", "ok": not self.failures, "failures": self.failures,
                "call_id": self.call_id, "reason": rec.get("reason"), "billed_cents": rec.get("billed_cents"),
                "billed_minutes": rec.get("billed_minutes"), "credited_cents": rec.get("credited_cents"),
                "paid_minutes": rec.get("paid_minutes"), "observed_bridged_ms": self.bridged_ms,
                "ended_by": self.ended_by, "probe": self.probe}


# ------------------------------------------------------------------ observation from AMI

def leg_events(ami, mark, prefix: str, name: str, linkedid: str | None = None) -> list[dict]:
    """A leg's events since mark; with linkedid, of that call only (an earlier test's channel of
    the same phone can still be hanging up after the mark)."""
    return ami.events(lambda e: e.get("Event") == name and e.get("Channel", "").startswith(prefix)
                      and (linkedid is None or e.get("Linkedid") == linkedid), since=mark)


def observe_bridge(cell: Cell, ami, mark, legs: tuple[str, str]) -> None:
    """Bridge start (both legs in), bridge end and hang-up times from AMI."""
    enters = [leg_events(ami, mark, p, "BridgeEnter") for p in legs]
    if all(enters):
        cell.bridged_at = max(float(e[0]["_t"]) for e in enters)
        leaves = [float(e["_t"]) for p in legs for e in leg_events(ami, mark, p, "BridgeLeave")
                  if float(e["_t"]) >= cell.bridged_at]
        hangs = [float(e["_t"]) for p in legs for e in leg_events(ami, mark, p, "Hangup")]
        ends = leaves + hangs
        if cell.component == "asterisk" and cell.killed_at >= cell.bridged_at:
            ends.append(cell.killed_at)
        if ends:
            cell.bridge_end_at = min(ends)
    linkedid = None
    if cell.call_id:
        r = admin_redis()
        try:
            linkedid = (records.get(r, cell.call_id) or {}).get("uniqueid")
        finally:
            r.close()
    hangs = [float(e["_t"]) for p in legs for e in leg_events(ami, mark, p, "Hangup", linkedid)]
    if cell.component == "asterisk" and not hangs:
        cell.hangup_at = cell.killed_at
    elif hangs:
        cell.hangup_at = min(hangs)


# ------------------------------------------------------------------ invariants

def minutes_held_at(call_id: str) -> dict[int, float]:
    """paid_minutes -> epoch s when the listener held it (its enforce.minute_held lines)."""
    out = {}
    for e in services.log_events("ami", "enforce.minute_held", call_id):
        ts = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
        out.setdefault(int(e["paid_minutes"]), ts)
    return out


def check_free_talk(cell: Cell) -> None:
    """At no moment was the call bridged more than the backstop past the minutes held so far
    (a minute held late, after the talk it pays for, does not make that talk paid in time)."""
    if cell.bridged_at is None:
        return
    paid = int(cell.record.get("paid_minutes") or 0)
    allowed = paid * rating.MINUTE_MS + rating.BACKSTOP_MS + TOLERANCE_MS
    if cell.bridged_ms > allowed:
        cell.fail("free_talk", f"bridged {cell.bridged_ms} ms, paid_minutes={paid} "
                               f"(allowed {paid} x 60 s + backstop {rating.BACKSTOP_MS} ms)")
        return
    held = minutes_held_at(cell.call_id)
    for minute in range(2, paid + 1):
        due_ms = (minute - 1) * rating.MINUTE_MS + rating.BACKSTOP_MS  # talk past this needs the minute
        if cell.bridged_ms <= due_ms + TOLERANCE_MS:
            break
        at = held.get(minute)
        late_ms = int((at - cell.bridged_at) * 1000) - due_ms if at else None
        if late_ms is None or late_ms > TOLERANCE_MS:
            cell.fail("free_talk", f"minute {minute} held {'never' if at is None else f'{late_ms} ms'} "
                                   f"after the backstop ({due_ms} ms bridged), while the call talked on "
                                   f"({cell.bridged_ms} ms bridged in all)")


def check_charged(cell: Cell, charges: list[int]) -> None:
    rec = cell.record
    billed, minutes = int(rec.get("billed_cents") or 0), int(rec.get("billed_minutes") or 0)
    credited = int(rec.get("credited_cents") or 0)
    if cell.bridged_at is None:
        # Killed at the called leg's BridgeEnter, the listener may have seen both legs enter the
        # bridge before Asterisk died while this tap did not: then the drop is billed and credited
        # in full at once (system_error in the first minute). Net, nobody paid; anything else fails.
        credited_in_full = rec.get("reason") == "system_error" and credited == billed == sum(charges)
        if (billed or sum(charges)) and not credited_in_full:
            cell.fail("charged", f"billed {billed} cents (ledger charges {charges}, credited {credited}) but "
                                 f"the legs were never bridged together")
        return
    most = -(-(cell.bridged_ms + TOLERANCE_MS) // rating.MINUTE_MS)
    if minutes > most:
        cell.fail("charged", f"billed {minutes} min for {cell.bridged_ms} ms bridged")
    if rec.get("reason") == "system_error" and cell.bridged_ms < rating.MINUTE_MS and credited != billed:
        cell.fail("charged", f"system_error after {cell.bridged_ms} ms bridged: billed {billed}, "
                             f"credited {credited} (should be credited in full)")


def check_settled(cell: Cell, settled_logs: int, charges: list[int]) -> None:
    rec = cell.record
    if rec.get("settled") != "1":
        cell.fail("settled", f"not settled {SETTLE_S} s after the parts were back and the call over "
                             f"(reason={rec.get('reason')!r}, ended_ms={rec.get('ended_ms')}, "
                             f"held_cents={rec.get('held_cents')})")
        return
    if cell.settled_at is not None:
        since = max(cell.back_at, cell.hangup_at or 0)
        if cell.settled_at - since > SETTLE_S:
            cell.fail("settled", f"settled {cell.settled_at - since:.1f} s after the parts were back "
                                 f"and the call over")
    # once: one charge when billed, none otherwise, never two call.settled lines (none is
    # possible: a process SIGKILLed between its settle script and its log line)
    billed = int(rec.get("billed_cents") or 0)
    if settled_logs > 1 or len(charges) != (1 if billed else 0):
        cell.fail("settled", f"settled {settled_logs} times (call.settled log lines), billed {billed}, "
                             f"charges {charges}")
    if cell.hangup_at is not None and rec.get("ended_ms"):
        off = int(rec["ended_ms"]) - int(cell.hangup_at * 1000)
        if abs(off) > TOLERANCE_MS:
            cell.fail("settled", f"ended_ms is {off:+d} ms from the real hang-up")
    if cell.expected_reasons and rec.get("reason") not in cell.expected_reasons:
        cell.fail("settled", f"reason {rec.get('reason')!r}, expected {' or '.join(cell.expected_reasons)} "
                             f"(ended by {cell.ended_by})")


def check_refused(cell: Cell) -> None:
    p = cell.probe
    if p.get("rang"):
        cell.fail("refused", f"a call placed while {cell.component} was down rang the called phone")
    elif not p.get("refused"):
        cell.fail("refused", f"a call placed while {cell.component} was down was not refused with a "
                             f"spoken message ({p.get('seen', 'no refusal prompt')})")


def check_explained(cell: Cell, ami, mark, legs: tuple[str, str]) -> None:
    """A call the system dropped (the part died, Asterisk still up) is explained to both
    parties: each leg hears a closing prompt (the system-error prompt, or [ics-cut]'s)."""
    if cell.ended_by != "system" or cell.component == "asterisk":
        return
    paid_ms = int(cell.record.get("paid_minutes") or 0) * rating.MINUTE_MS
    if cell.bridged_at is not None and cell.bridged_ms >= paid_ms - TOLERANCE_MS:
        return  # ended at the paid time (the listener's cut or the backstop): not a drop
    silent = []
    for prefix in legs:
        heard = [e.get("Message", "") for e in leg_events(ami, mark, prefix, "TestEvent")
                 if e.get("State") == "PLAYBACK"]
        if not any(m in REFUSAL_PROMPTS or m.startswith("ics/prompts/cut-") for m in heard):
            silent.append(f"{prefix.rstrip('-')} heard {heard[-3:] or 'nothing'}")
    if silent:
        cell.fail("explained", "dropped without a closing prompt: " + "; ".join(silent))


def ledger_check() -> tuple[int, str]:
    env = dict(os.environ)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "icsctl"), "ledger", "check"], capture_output=True,
                       text=True, timeout=30, env=env)
    return r.returncode, (r.stdout + r.stderr).strip()


def check_ledger(cell: Cell) -> None:
    rc, out = ledger_check()
    if rc != 0:
        cell.fail("ledger", f"icsctl ledger check exit {rc}: {out[-300:]}")


def settled_log_lines(call_id: str, wait_s: float = 3) -> int:
    """call.settled lines of both services for the call (the line follows the Redis write:
    wait up to wait_s for the first one)."""
    deadline = time.monotonic() + wait_s
    while True:
        n = sum(len(services.log_events(name, "call.settled", call_id)) for name in ("fastagi", "ami"))
        if n or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def write_result(cell: Cell) -> None:
    path = stack_dir() / "log" / "faults.jsonl"
    with open(path, "a") as fh:
        fh.write(json.dumps(cell.summary()) + "\n")
