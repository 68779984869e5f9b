"""Ledger check: every account's balance is what its ledger stream says, holds match live calls,
and no money change of a call is left half-done.

For each account, in one MULTI snapshot of its slot ({a:<aid>}: the account hash, its stream,
its open holds and its pending second steps):

  balance_cents == deposits - charges - refunds + credits - expiries
  every entry's recorded balance_cents == the running sum up to it
  held_cents >= 0 (and balance_cents >= 0 for prepaid accounts)
  held_cents == sum of held_cents of its open holds (keys.account_holds, keys.call_money)
  no stale hold: an open hold whose call ended (ended_ms set) more than
  STALE_HOLD_GRACE_MS ago means settlement was lost
  no half-done second step: a money change (hold, settlement, credit) whose copy to the call
  record and weekly quota (ics.store.money.Money.sync_call) is still pending; settling the
  call again (the hangup handler, the listener's retry, or by hand) completes it

A mismatch or a pending step is read again a few times before it is reported: a call that
reserved or settled during the check is not a fault. Used by `icsctl ledger check`.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from . import keys
from .store import as_entries

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


def open_holds(r: redis.Redis, aid: str, cids: list[str]) -> dict[str, int]:
    """call id -> cents held, for the account's open holds."""
    with r.pipeline(transaction=False) as p:
        for cid in cids:
            p.hget(keys.call_money(aid, cid), "held_cents")
        return {cid: _int(held) or 0 for cid, held in zip(cids, p.execute())}


def stale_holds(r: redis.Redis, cids: list[str], held: dict[str, int], now_ms: int | None = None) -> list[str]:
    """Open holds whose call ended over STALE_HOLD_GRACE_MS ago (the call records: other slots)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    with r.pipeline(transaction=False) as p:
        for cid in cids:
            p.hget(keys.call(cid), "ended_ms")
        ended = p.execute()
    return [f"stale hold: call {cid} ended {(now - int(e)) // 1000}s ago unsettled, still holding {held[cid]} cents"
            for cid, e in zip(cids, ended) if _int(e) and now - int(e) > STALE_HOLD_GRACE_MS]


def check_account(r: redis.Redis, aid: str) -> dict:
    """Balance against the ledger for one account (one consistent snapshot)."""
    with r.pipeline(transaction=True) as p:  # one slot: one snapshot
        p.hgetall(keys.account(aid))
        p.xrange(keys.ledger(aid))
        p.smembers(keys.account_holds(aid))
        p.hgetall(keys.account_unsynced(aid))
        acct, entries, holding, unsynced = p.execute()
    entries = as_entries(entries)
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
    holds = open_holds(r, aid, sorted(holding))
    doc.update(holds_cents=sum(holds.values()), open_holds=holds, unsynced=unsynced)
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

    def suspect(d: dict) -> bool:  # a hold or a second step in flight, or a real fault: read again
        return d.get("held_cents") != d.get("holds_cents") or bool(d.get("unsynced"))

    for _ in range(HELD_RETRIES):
        again = [aid for aid, d in docs.items() if "holds_cents" in d and suspect(d)]
        if not again:
            break
        time.sleep(0.05)
        docs.update({aid: check_account(r, aid) for aid in again})
    for aid, doc in docs.items():
        if "holds_cents" not in doc:
            continue
        if doc["held_cents"] != doc["holds_cents"]:
            doc["problems"].append(f"held {doc['held_cents']} != {doc['holds_cents']} held by its open holds")
        for cid, v in sorted(doc["unsynced"].items()):
            doc["problems"].append(
                f"half-done: call {cid}'s money (version {v}) is not yet copied to its call record and "
                "weekly quota; the listener's settlement retry, or icsctl calls settle CALL, completes it")
        doc["problems"].extend(stale_holds(r, sorted(doc["open_holds"]), doc["open_holds"]))
    for k in r.scan_iter(match=keys.ledger("*"), count=SCAN_COUNT):
        aid = keys.tag_id(k)
        if aid not in docs:
            docs[aid] = {"account": aid, "problems": ["ledger stream without an account in ics:accounts"]}
    out = [dict(d, ok=not d["problems"]) for _, d in sorted(docs.items())]
    failed = [d["account"] for d in out if not d["ok"]]
    return {"ok": not failed, "accounts": out, "failed": failed}
