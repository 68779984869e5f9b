"""Call records: every call, accepted or not, leaves one hash in Redis.

Fields (times are epoch ms, money integer cents):
  call_id facility inmate number account channel uniqueid station (handset caller ID)
  node         the call node (config node.id) whose Asterisk carries the call: its listener
               enforces it, icsctl reaches it through that node's AMI (keys.node)
  number       E.164 (+13125550100; records from before the E.164 change keep the digits as
               dialled); a short code as dialled (911); "invalid" for text that is no number
  dest_kind dest_region   the number's type and country (ics.destination), e.g. mobile JM
  started_ms answered_ms bridged_ms ended_ms
  rate_cents limit_s held_cents
  paid_minutes whole minutes held so far: the first by the inmate flow, each next one by
               the AMI listener before it starts (ics.store extend_hold)
  dest_class   local / instate / interstate / international (ics.rating)
  tax_bps      taxes passed through on this call (basis points of the total)
  outcome      dialing / refused / accepted / ...   (where the flow got to)
  reason       one code from ics.reasons (set once, first writer wins)
  billed_minutes billed_cents settled
               held_cents, paid_minutes, settled, billed_*, tax_cents, credited_cents and
               credit_reason are copies of the call's money in its account's slot
               (keys.call_money), written by the second step (ics.store.money sync_call)
  tax_cents    the tax part of billed_cents (set with it, once, by the settle script)
  credited_cents credit_reason   automatic credit (ics.store.Store.auto_credit), once
  detail       free text for ops (e.g. which key was pressed)
  rule rule_threshold cut_ms evidence   set when the call was ended on purpose (record_cut):
               by a rule of the AMI listener, a lockdown or an investigator's cut-off: what,
               on what grounds, when (billing stops there: the triggering event's own
               Asterisk time, or the deadline; never after ended_ms) and the AMI events that
               triggered it (JSON list of {event, time, channel, headers})
  before_accept  JSON list of {reason, events} for each hook flash, hold or transfer before
               the bridge that the facility only records (before_accept = "record")
  fired        JSON list of {rule, response, at_ms, threshold, evidence}: every rule that fired
               during the call and what was done (disconnect, warn, flag); evidence of the called
               leg's audio is {event: ToneDetect, signature, offset_ms (into the call), duration_ms,
               level_dbfs, detail}
  responses    JSON {rule: response}: the call's effective responses (facility, then the number's
               override, then the call's own: keys.number_rules, keys.call_rules)
  responses_why  who set the call's own responses and why (keys.call_rules field "why")
  unit         the inmate's living unit when the call was placed
  privileged   1 for a registered attorney number: never recorded, never monitored
  recording    MixMonitor file, relative to the recordings dir (absent when privileged)
  recording_check  ok / short / missing: the recording measured against the bridge when the call
               settled (ics.recordings; absent: not recorded, never bridged, or not checked yet)
  bridged_for_ms   bridged time: bridged_ms to the end of the call (or to cut_ms)
  recording_ms     audio in the recording file (from its data bytes)
  recording_short_ms  bridged time the recording lacks, set when flagged (over recordings.max_short_ms)
  inmate_language called_language  what each party heard (ics.prompts codes); called_language is
               the called party's last choice
  language_switched  the called party's switches before choosing, e.g. "en>es"
  line         relay / tty / free / unrecorded: a destination the facility treats apart
               (agi/flows/inmate.py Line); free 1 = never billed (rate 0, nothing held); anytime 1 =
               outside schedules and weekly quotas
  rules_off rules_off_why  the audio rules (ami/rules.py AUDIO_RULES) off for this call, and why
"""

from __future__ import annotations

import json
import re
import secrets
import time

import redis

from . import keys
from .store import Lua, now_ms

FIELDS = (
    "call_id", "facility", "inmate", "number", "dest_kind", "dest_region", "account", "channel", "uniqueid", "node", "station",
    "started_ms", "answered_ms", "bridged_ms", "ended_ms",
    "rate_cents", "dest_class", "tax_bps", "limit_s", "held_cents", "outcome", "reason", "detail",
    "billed_minutes", "billed_cents", "tax_cents", "settled", "credited_cents", "credit_reason",
    "rule", "rule_threshold", "cut_ms", "evidence", "paid_minutes",
    "unit", "privileged", "recording", "before_accept",
    "recording_check", "bridged_for_ms", "recording_ms", "recording_short_ms",
    "fired", "responses", "responses_why",
    "inmate_language", "called_language", "language_switched",
    "line", "free", "anytime", "rules_off", "rules_off_why",
)

INT_FIELDS = {
    "started_ms", "answered_ms", "bridged_ms", "ended_ms", "rate_cents", "tax_bps", "limit_s",
    "held_cents", "billed_minutes", "billed_cents", "tax_cents", "credited_cents", "cut_ms", "paid_minutes",
    "bridged_for_ms", "recording_ms", "recording_short_ms",
}


CALL_ID_RE = re.compile(r"^[0-9]{14}-[0-9a-f]{8}$")  # what new_call_id makes


def new_call_id() -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def create(r: redis.Redis, call_id: str, **fields) -> None:
    started = fields.setdefault("started_ms", now_ms())
    with r.pipeline(transaction=False) as p:  # two slots (on a cluster): the record, then the index
        p.hset(keys.call(call_id), mapping={"call_id": call_id, **{k: v for k, v in fields.items() if v is not None}})
        p.zadd(keys.CALLS, {call_id: started})
        p.execute()


def update(r: redis.Redis, call_id: str, **fields) -> None:
    r.hset(keys.call(call_id), mapping={k: v for k, v in fields.items() if v is not None})


def set_reason(r: redis.Redis, call_id: str, reason: str) -> bool:
    """The first reason recorded wins: later hang-up noise cannot overwrite why a call ended."""
    return bool(r.hsetnx(keys.call(call_id), "reason", reason))


# Reasons settlement gives a call that simply ended: a deliberate cut's reason is more exact.
PLAIN_ENDS = ("called_hangup", "inmate_hangup")




def _cut(r: redis.Redis, call_id: str, reason: str, threshold: str, at_ms: int, events, system_drop: bool) -> bool:
    # one step (ics/store/lua/cut.lua), so no reader sees half a cut
    return bool(Lua(r, "cut.lua")(keys=[keys.call(call_id)], args=[
        at_ms, reason, threshold, json.dumps(list(events), separators=(",", ":")), int(system_drop), *PLAIN_ENDS]))


def record_cut(r: redis.Redis, call_id: str, reason: str, threshold: str, at_ms: int,
               events: list[dict] | tuple = ()) -> None:
    """A call ended on purpose (a rule of the AMI listener, a lockdown, an investigator):
    why, on what grounds, when billing stops, and the evidence. Written before the legs
    hear it. The first reason wins, except over a plain hang-up: a transfer can make
    Asterisk hang a leg up itself, and its hangup handler may settle the call first."""
    _cut(r, call_id, reason, threshold, at_ms, events, system_drop=False)


def record_system_drop(r: redis.Redis, call_id: str, threshold: str, at_ms: int,
                       events: list[dict] | tuple = ()) -> bool:
    """The system dropped the call (Asterisk restarted or crashed, a hang-up cause that means
    the network failed): reason system_error, dated at_ms, with the evidence, as record_cut
    writes a rule's. It replaces nothing but a plain hang-up (which a settlement that could not
    know may have written first); a deliberate cut's reason and evidence stay. Whether settled
    before or after, settlement's auto credit then applies once (ics.store.auto_credit)."""
    return _cut(r, call_id, "system_error", threshold, at_ms, events, system_drop=True)


def note_before_accept(r: redis.Redis, call_id: str, reason: str, events: list[dict] | tuple) -> None:
    """A fault before the bridge the facility only records: appended to the call's list."""
    _append(r, call_id, "before_accept", {"reason": reason, "events": list(events)})


def note_fired(r: redis.Redis, call_id: str, fired: dict) -> None:
    """A rule fired during the call ({rule, response, at_ms, threshold, evidence}): appended to
    the record's `fired` list, whatever was done about it."""
    _append(r, call_id, "fired", fired)


def alert(r: redis.Redis, call_id: str, fired: dict, info: dict) -> None:
    """The investigators' alert stream (keys.ALERTS): a rule that warned or flagged."""
    r.xadd(keys.ALERTS, {"call": call_id, **{k: info.get(k, "") for k in ("facility", "inmate", "number")},
                         "rule": fired["rule"], "response": fired["response"], "at_ms": fired["at_ms"],
                         "threshold": fired["threshold"],
                         "evidence": json.dumps(fired["evidence"], separators=(",", ":"))},
           maxlen=keys.ALERTS_MAXLEN, approximate=True)


def _append(r: redis.Redis, call_id: str, field_name: str, item: dict) -> None:
    key = keys.call(call_id)
    with r.pipeline(transaction=True) as p:  # optimistic (WATCH): a concurrent note retries, none is lost
        while True:
            try:
                p.watch(key)
                noted = json.loads(p.hget(key, field_name) or "[]")
                noted.append(item)
                p.multi()
                p.hset(key, field_name, json.dumps(noted, separators=(",", ":")))
                p.execute()
                return
            except redis.WatchError:
                continue


def mark_ended(r: redis.Redis, call_id: str, when_ms: int) -> None:
    """The first hang-up seen sets the end time; a duplicate cannot stretch the bill."""
    Lua(r, "end_at.lua")(keys=[keys.call(call_id)], args=[when_ms])


def get(r: redis.Redis, call_id: str) -> dict | None:
    raw = r.hgetall(keys.call(call_id))
    if not raw:
        return None
    return {k: (int(v) if k in INT_FIELDS and v.lstrip("-").isdigit() else v) for k, v in raw.items()}


def recent(r: redis.Redis, limit: int = 20) -> list[dict]:
    ids = r.zrevrange(keys.CALLS, 0, limit - 1)
    out = []
    for cid in ids:
        rec = get(r, cid)
        if rec:
            out.append(rec)
    return out
