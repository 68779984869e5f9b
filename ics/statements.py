"""Monthly account statements (CSV or one printable HTML page), built from the ledger.

A month is [first day 00:00 UTC, next month) on the ledger stream's own clock:
an entry belongs to the month its stream id (Redis server time, strictly
increasing) falls in, so months partition the stream with no gap or overlap.

Opening balance = the sum of every entry before the month; closing = opening +
the month's movements. A statement is refused (StatementError) unless it
reconciles: every entry's recorded balance equals the running sum, the opening
equals the balance recorded by the last entry before the month, the closing
equals the last entry in it, and, when nothing was ledgered after the month,
the account's current balance.
"""

from __future__ import annotations

import csv
import html
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import keys
from .ledger import SIGN
from .store import Store, as_entries

MONTH_RE = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")


class StatementError(ValueError):
    """No statement can be made (bad month, no account, or it does not reconcile)."""


@dataclass
class Line:
    entry_id: str
    at_ms: int
    kind: str
    amount_cents: int  # signed: what the entry did to the balance
    balance_cents: int
    call_id: str = ""
    note: str = ""
    number: str = ""
    inmate: str = ""
    minutes: int | None = None
    rate_cents: int | None = None
    tax_cents: int | None = None
    credited_cents: int | None = None


@dataclass
class Statement:
    account: str
    owner: str
    month: str
    start_ms: int
    end_ms: int
    opening_cents: int
    closing_cents: int
    lines: list[Line] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)  # kind -> cents (unsigned)

    @property
    def calls(self) -> list[Line]:
        return [ln for ln in self.lines if ln.kind == "charge"]


def month_range(month: str) -> tuple[int, int]:
    m = MONTH_RE.match(month or "")
    if not m:
        raise StatementError(f"month must be YYYY-MM, got {month!r}")
    y, mo = int(m.group(1)), int(m.group(2))
    start = datetime(y, mo, 1, tzinfo=timezone.utc)
    end = datetime(y + (mo == 12), 1 if mo == 12 else mo + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def build(store: Store, aid: str, month: str) -> Statement:
    start, end = month_range(month)
    r = store.r
    with r.pipeline(transaction=True) as p:  # one snapshot: account and its whole stream
        p.hgetall(keys.account(aid))
        p.xrange(keys.ledger(aid))
        acct, entries = p.execute()
    entries = as_entries(entries)
    if not acct:
        raise StatementError(f"no such account {aid}")
    running = 0
    opening = 0
    opening_recorded: int | None = None
    lines: list[Line] = []
    later = False
    for eid, e in entries:
        kind, amount, recorded = e.get("kind"), _int(e.get("amount_cents")), _int(e.get("balance_cents"))
        if kind not in SIGN or amount is None or amount < 0:
            raise StatementError(f"account {aid}: ledger entry {eid} is malformed ({kind!r}, {e.get('amount_cents')!r})")
        running += SIGN[kind] * amount
        if recorded != running:
            raise StatementError(f"account {aid}: ledger entry {eid} records balance {recorded} "
                                 f"but the ledger sums to {running}; statement refused")
        at = _ms(eid)
        if at < start:
            opening, opening_recorded = running, recorded
        elif at < end:
            lines.append(Line(eid, at, kind, SIGN[kind] * amount, recorded, call_id=e.get("call", ""),
                              note=e.get("note", ""), minutes=_int(e.get("minutes"))))
        else:
            later = True
    if opening_recorded is not None and opening_recorded != opening:
        raise StatementError(f"account {aid}: opening balance does not reconcile")
    closing = opening + sum(ln.amount_cents for ln in lines)
    if lines and closing != lines[-1].balance_cents:
        raise StatementError(f"account {aid}: closing {closing} != last recorded balance "
                             f"{lines[-1].balance_cents}; statement refused")
    if not later and closing != _int(acct.get("balance_cents")):
        raise StatementError(f"account {aid}: closing balance {closing} != account balance "
                             f"{acct.get('balance_cents')}; the ledger does not explain the balance, "
                             "statement refused (run: icsctl ledger check)")

    call_ids = sorted({ln.call_id for ln in lines if ln.call_id})
    with r.pipeline(transaction=False) as p:
        for cid in call_ids:
            p.hgetall(keys.call(cid))
        recs = dict(zip(call_ids, p.execute()))
    for ln in lines:
        rec = recs.get(ln.call_id) or {}
        ln.number, ln.inmate = rec.get("number", ""), rec.get("inmate", "")
        if ln.kind == "charge":
            ln.at_ms = _int(rec.get("bridged_ms")) or _int(rec.get("started_ms")) or ln.at_ms
            ln.minutes = ln.minutes if ln.minutes is not None else _int(rec.get("billed_minutes"))
            ln.rate_cents = _int(rec.get("rate_cents"))
            ln.tax_cents = _int(rec.get("tax_cents"))
            ln.credited_cents = _int(rec.get("credited_cents"))
    totals = {k: sum(abs(ln.amount_cents) for ln in lines if ln.kind == k) for k in SIGN}
    movement = sum(SIGN[k] * v for k, v in totals.items())
    assert closing == opening + movement, "statement does not reconcile"  # by construction; checked anyway
    return Statement(aid, acct.get("owner", ""), month, start, end, opening, closing, lines, totals)


# --- rendering ----------------------------------------------------------------------

def money(cents: int | None, signed: bool = False) -> str:
    if cents is None:
        return ""
    sign = "-" if cents < 0 else ("+" if signed and cents > 0 else "")
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


CSV_HEADER = ["date_utc", "kind", "call_id", "number", "inmate", "minutes", "rate_per_min",
              "charge", "tax", "credited", "amount", "balance", "note"]


def write_csv(st: Statement, path) -> None:
    """One table: an opening_balance row, one row per ledger entry (amount signed), closing_balance."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        title = f"account {st.account} ({st.owner}), statement for {st.month} (UTC)"
        w.writerow([utc(st.start_ms), "opening_balance", "", "", "", "", "", "", "", "", "",
                    money(st.opening_cents), title])
        for ln in st.lines:
            charge = -ln.amount_cents if ln.kind == "charge" else None
            w.writerow([utc(ln.at_ms), ln.kind, ln.call_id, ln.number, ln.inmate,
                        "" if ln.minutes is None else ln.minutes, money(ln.rate_cents), money(charge),
                        money(ln.tax_cents), money(ln.credited_cents), money(ln.amount_cents),
                        money(ln.balance_cents), ln.note])
        w.writerow([utc(st.end_ms - 1), "closing_balance", "", "", "", "", "", "", "", "", "",
                    money(st.closing_cents), title])


_CSS = """
body{font:14px/1.4 Helvetica,Arial,sans-serif;color:#111;max-width:60rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
p.meta{margin:0;color:#444}
table{border-collapse:collapse;width:100%}th,td{padding:.25rem .5rem;border-bottom:1px solid #ccc;text-align:left}
th{background:#eee}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sum{width:auto;min-width:22rem}tr.total td{font-weight:bold;border-top:2px solid #111}
p.note{color:#444;font-size:.85rem}
@media print{body{margin:0;max-width:none}th{background:none}h2{break-after:avoid}tr{break-inside:avoid}}
"""


def render_html(st: Statement) -> str:
    e = html.escape

    def d(cents):
        return e(f"${money(cents)}") if cents is not None else ""

    sums = [("Opening balance", st.opening_cents), ("Deposits", st.totals["deposit"]),
            ("Calls", -st.totals["charge"]), ("Refunds", -st.totals["refund"]),
            ("Credits", st.totals["credit"]), ("Expired funds", -st.totals["expiry"])]
    rows = "".join(f"<tr><td>{e(k)}</td><td class=n>{d(v)}</td></tr>" for k, v in sums
                   if k == "Opening balance" or v)
    rows += f"<tr class=total><td>Closing balance</td><td class=n>{d(st.closing_cents)}</td></tr>"
    calls = "".join(
        f"<tr><td>{e(utc(c.at_ms))}</td><td>{e(c.number)}</td><td>{e(c.inmate)}</td>"
        f"<td class=n>{'' if c.minutes is None else c.minutes}</td><td class=n>{d(c.rate_cents)}</td>"
        f"<td class=n>{d(-c.amount_cents)}</td><td class=n>{d(c.tax_cents)}</td>"
        f"<td class=n>{d(c.credited_cents)}</td></tr>" for c in st.calls)
    calls_table = ("<table><tr><th>Date/time (UTC)</th><th>Number</th><th>Inmate</th><th class=n>Minutes</th>"
                   "<th class=n>Rate/min</th><th class=n>Charge</th><th class=n>Tax</th><th class=n>Credited</th>"
                   f"</tr>{calls}</table>") if calls else "<p>No calls this month.</p>"
    others = [ln for ln in st.lines if ln.kind != "charge"]
    moves = "".join(
        f"<tr><td>{e(utc(m.at_ms))}</td><td>{e(m.kind)}</td><td class=n>{e(money(m.amount_cents, True))}</td>"
        f"<td class=n>{d(m.balance_cents)}</td><td>{e(m.note or m.call_id)}</td></tr>" for m in others)
    moves_table = ("<table><tr><th>Date/time (UTC)</th><th>Kind</th><th class=n>Amount</th>"
                   f"<th class=n>Balance</th><th>Note</th></tr>{moves}</table>") if moves else \
        "<p>No deposits, refunds or credits this month.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Statement {e(st.account)} {e(st.month)}</title>
<style>{_CSS}</style></head><body>
<h1>Account statement: {e(st.month)}</h1>
<p class=meta>Account <b>{e(st.account)}</b> &middot; {e(st.owner)}</p>
<p class=meta>{e(utc(st.start_ms))} to {e(utc(st.end_ms - 1))} UTC</p>
<h2>Summary</h2><table class=sum>{rows}</table>
<h2>Calls</h2>{calls_table}
<h2>Deposits, refunds and credits</h2>{moves_table}
<p class=note>Charge is the amount taken from the balance for the call; tax is shown as recorded on the
call. Credits are listed again under deposits, refunds and credits, where they enter the balance.</p>
</body></html>
"""


def write_html(st: Statement, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(st))
