"""Ledger check: every account's balance is what its ledger stream says, holds match live calls.

For each account, in one MULTI snapshot of the account hash and its stream:

  balance_cents == deposits - charges - refunds + credits - expiries
  every entry's recorded balance_cents == the running sum up to it
  held_cents >= 0 (and balance_cents >= 0 for prepaid accounts)
  held_cents == sum of held_cents of its unsettled calls (SCAN of ics:call:*)
  no stale hold: an unsettled call that has ended (ended_ms set) more than
  STALE_HOLD_GRACE_MS ago still holding money means settlement was lost

Holds are read outside the snapshot (calls are not indexed per account), so a
held mismatch is read again a few times before it is reported: a call that
reserved or settled during the scan is not a fault. Used by `icsctl ledger check`.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from . import keys

SIGN = {"deposit": 1, "credit": 1, "charge": -1, "refund": -1, "expiry": -1}
KINDS = tuple(SIGN)
HELD_RETRIES = 3
SCAN_COUNT = 1000
# a hang-up is settled within milliseconds (hangup handler) or a few seconds (the AMI
# listener's sweep, ami.listener.SETTLE_GRACE_S): an ended call holding money longer is a fault
STALE_HOLD_GRACE_MS = 15_000


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def call_holds(r: redis.Redis, stale: dict[str, list[str]] | None = None,
               now_ms: int | None = None) -> dict[str, int]:
    """account id -> cents held by its unsettled calls. With stale given, also fills
    account id -> descriptions of holds whose call ended over STALE_HOLD_GRACE_MS ago."""
    holds: dict[str, int] = {}
    batch: list[str] = []
    now = int(time.time() * 1000) if now_ms is None else now_ms

    def flush() -> None:
        with r.pipeline(transaction=False) as p:
            for k in batch:
                p.hmget(k, "account", "held_cents", "settled", "ended_ms", "call_id")
            for aid, held, settled, ended, cid in p.execute():
                if aid and settled != "1" and _int(held):
                    holds[aid] = holds.get(aid, 0) + int(held)
                    if stale is not None and _int(ended) and now - int(ended) > STALE_HOLD_GRACE_MS:
                        stale.setdefault(aid, []).append(
                            f"stale hold: call {cid} ended {(now - int(ended)) // 1000}s ago unsettled, "
                            f"still holding {held} cents")
        batch.clear()

    for k in r.scan_iter(match=keys.call("*"), count=SCAN_COUNT, _type="hash"):
        batch.append(k)
        if len(batch) >= SCAN_COUNT:
            flush()
    if batch:
        flush()
    return holds


def check_account(r: redis.Redis, aid: str) -> dict:
    """Balance against the ledger for one account (one consistent snapshot)."""
    with r.pipeline(transaction=True) as p:
        p.hgetall(keys.account(aid))
        p.xrange(keys.ledger(aid))
        acct, entries = p.execute()
    doc: dict[str, Any] = {"account": aid, "problems": []}
    problems = doc["problems"]
    if not acct:
        problems.append("listed in ics:accounts but its hash is missing")
        return doc
    totals = {k: 0 for k in KINDS}
    running = 0
    for eid, e in entries:
        kind, amount, recorded = e.get("kind"), _int(e.get("amount_cents")), _int(e.get("balance_cents"))
        if kind not in SIGN:
            problems.append(f"entry {eid} has unknown kind {kind!r}")
            continue
        if amount is None or amount < 0:
            problems.append(f"entry {eid} has a bad amount {e.get('amount_cents')!r}")
            continue
        totals[kind] += amount
        running += SIGN[kind] * amount
        if recorded != running and not any("recorded balance" in x for x in problems):
            problems.append(f"entry {eid} ({kind}) records balance {recorded} but the ledger sums to {running}")
    balance, held = _int(acct.get("balance_cents")), _int(acct.get("held_cents"))
    doc.update(type=acct.get("type"), balance_cents=balance, held_cents=held, ledger_cents=running,
               entries=len(entries), **{f"{k}_cents": v for k, v in totals.items()})
    if balance != running:
        problems.append(f"balance {balance} != ledger {running} (deposits {totals['deposit']} - charges "
                        f"{totals['charge']} - refunds {totals['refund']} + credits {totals['credit']} "
                        f"- expiries {totals['expiry']})")
    if held is None or held < 0:
        problems.append(f"held_cents is {acct.get('held_cents')!r}, not >= 0")
    if acct.get("type") == "prepaid" and balance is not None and balance < 0:
        problems.append(f"prepaid balance is negative ({balance})")
    return doc


def check(r: redis.Redis) -> dict:
    """Every account, plus ledgers with no account. {'ok': bool, 'accounts': [...], 'failed': [ids]}."""
    aids = sorted(r.smembers(keys.ACCOUNTS))
    docs = {aid: check_account(r, aid) for aid in aids}
    stale: dict[str, list[str]] = {}
    holds = call_holds(r, stale)
    suspect = set()
    for aid, doc in docs.items():
        doc["holds_cents"] = holds.get(aid, 0)
        if doc.get("held_cents") is not None and doc["held_cents"] != doc["holds_cents"]:
            suspect.add(aid)
    for _ in range(HELD_RETRIES):  # calls in flight: read again before blaming the account
        if not suspect:
            break
        time.sleep(0.05)
        holds = call_holds(r)
        for aid in list(suspect):
            held = _int(r.hget(keys.account(aid), "held_cents"))
            docs[aid]["held_cents"], docs[aid]["holds_cents"] = held, holds.get(aid, 0)
            if held == holds.get(aid, 0):
                suspect.discard(aid)
    for aid in sorted(suspect):
        docs[aid]["problems"].append(f"held {docs[aid]['held_cents']} != {docs[aid]['holds_cents']} "
                                     "held by its unsettled calls")
    if stale:  # settled meanwhile (the listener retrying)? read again before blaming the account
        time.sleep(0.05)
        stale = {}
        call_holds(r, stale)
    for aid, found in sorted(stale.items()):
        doc = docs.setdefault(aid, {"account": aid, "problems": []})
        doc["problems"].extend(found)
    prefix = keys.ledger("")
    for k in r.scan_iter(match=keys.ledger("*"), count=SCAN_COUNT):
        aid = k[len(prefix):]
        if aid not in docs:
            docs[aid] = {"account": aid, "problems": ["ledger stream without an account in ics:accounts"]}
    out = [dict(d, ok=not d["problems"]) for _, d in sorted(docs.items())]
    failed = [d["account"] for d in out if not d["ok"]]
    return {"ok": not failed, "accounts": out, "failed": failed}
