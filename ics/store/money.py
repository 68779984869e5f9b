"""Money: accounts, holds, settlement, the ledger, refunds, expiry and automatic credits.

Money is integer cents everywhere (balances, holds, limits, charges). Every money change
runs in one Lua script (lua/*.lua), so it is atomic and ledgered in the same step.

Keys (ics.keys): ics:accounts, ics:account:{aid} (and :numbers, :month:*), ics:number:{number},
ics:ledger:{aid}.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import keys
from ..destination import Destination
from .base import Base, StoreError, check_id, dest, now_ms, one_line, stored

ACCOUNT_TYPES = ("prepaid", "direct_bill", "inmate_debit")
MAX_MONTHLY_LIMIT_CENTS = 100_000_00
MAX_DEPOSIT_CENTS = 100_000_00  # $100,000.00 in one deposit is a typo, not a family topping up
INACTIVITY_MS = 180 * 86_400_000  # FCC 64.6130: no disposal before 180 days of inactivity
EXPIRING_TYPES = ("prepaid",)
AUTO_CREDIT_MS = 60_000  # a system drop within the first minute of bridged time is credited in full
# the fields of a call's money (keys.call_money) the second step copies to its call record
COPIED = ("held_cents", "paid_minutes", "settled", "billed_cents", "billed_minutes", "tax_cents",
          "credited_cents", "credit_reason")


class AccountExpired(StoreError):
    """The account is flagged expired (FCC 64.6130): it holds nothing for a call."""

    def __init__(self, aid: str):
        super().__init__(f"account {aid} is expired; a deposit reactivates it")
        self.account = aid


def month_of(ms: int) -> str:
    """The billing month (UTC) of an epoch-ms time, as YYYYMM."""
    return time.strftime("%Y%m", time.gmtime(ms / 1000))


def dollars(cents: int) -> str:
    return f"{'-' if cents < 0 else ''}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def debit_account_id(iid: str) -> str:
    """The inmate's own (inmate_debit) account id."""
    return f"debit-{iid}"


@dataclass
class Account:
    """Integer cents. prepaid / inmate_debit spend their balance; direct_bill spends
    its monthly limit (its balance is what it owes, never used to authorise a call)."""
    id: str
    type: str
    balance_cents: int
    held_cents: int
    monthly_limit_cents: int = 0
    month_billed_cents: int = 0
    inmate: str = ""

    @property
    def available_cents(self) -> int:
        if self.type == "direct_bill":
            return self.monthly_limit_cents - self.month_billed_cents - self.held_cents
        return self.balance_cents - self.held_cents


class Money(Base):
    WAIT_FOR_REPLICAS = True
    LUA = {"_reserve": ("available.lua", "reserve.lua"), "_extend": ("available.lua", "extend.lua"),
           "_settle": "settle.lua", "_adjust": "adjust.lua", "_refund_all": "refund_all.lua",
           "_expire": "expire.lua", "_dispose": "dispose.lua", "_credit": "credit.lua",
           "_count_week": "count_week.lua", "_synced": "synced.lua"}

    # --- accounts ------------------------------------------------------------
    def create_account(self, aid: str, owner: str, numbers: list[str], kind: str = "prepaid", *,
                       monthly_limit_cents: int | None = None, inmate: str | None = None) -> None:
        """prepaid: numbers it pays for, funded by deposits. direct_bill: landline numbers
        only (LIDB), billed up to monthly_limit_cents a month. inmate_debit: the inmate's
        own account, id debit-<inmate>, no numbers. All money integer cents."""
        check_id("account id", aid)
        if kind not in ACCOUNT_TYPES:
            raise StoreError(f"unsupported account type {kind!r} ({', '.join(ACCOUNT_TYPES)})")
        one_line("account owner", owner)
        extra: dict[str, Any] = {}
        if kind == "direct_bill":
            if (not isinstance(monthly_limit_cents, int) or isinstance(monthly_limit_cents, bool)
                    or not 0 < monthly_limit_cents <= MAX_MONTHLY_LIMIT_CENTS):
                raise StoreError("a direct_bill account needs a monthly limit: a whole number of cents, "
                                 f"1 to {MAX_MONTHLY_LIMIT_CENTS}, got {monthly_limit_cents!r}")
            if not numbers:
                raise StoreError("a direct_bill account needs at least one number")
            extra["monthly_limit_cents"] = monthly_limit_cents
        elif monthly_limit_cents is not None:
            raise StoreError("only a direct_bill account has a monthly limit")
        if kind == "inmate_debit":
            if not inmate or not self.r.exists(keys.inmate(inmate)):
                raise StoreError(f"an inmate_debit account needs an existing inmate, got {inmate!r}")
            if aid != debit_account_id(inmate):
                raise StoreError(f"the debit account of inmate {inmate} is {debit_account_id(inmate)!r}, "
                                 f"not {aid!r}")
            if numbers:
                raise StoreError("an inmate_debit account pays for the inmate's calls, not for numbers")
            extra["inmate"] = inmate
        elif inmate is not None:
            raise StoreError("only an inmate_debit account belongs to an inmate")
        if self.r.exists(keys.account(aid)):
            raise StoreError(f"account {aid!r} already exists")
        parsed = [dest(n) for n in numbers]
        numbers = list(dict.fromkeys(d.e164 for d in parsed))  # "(312) 555-0100" and "3125550100" are one
        for d in parsed:
            if kind == "direct_bill" and d.country_code != 1:
                raise StoreError(f"{d.e164}: direct bill is for North American (+1) landlines")
        for n in numbers:
            other = self.r.get(keys.number_account(n))
            if other:
                raise StoreError(f"number {n} already belongs to account {other}")
            if kind == "direct_bill":
                problem = self.collect_problem(n)
                if problem:
                    raise StoreError(f"direct bill needs a landline that accepts collect calls: {problem} "
                                     "(a prepaid account can pay for it)")
        # The account id, then each number, is claimed atomically (HSETNX, SET NX); the numbers
        # live in other slots than the account, so no transaction spans them: a claim lost to a
        # concurrent create undoes this one's.
        if not self.r.hsetnx(keys.account(aid), "type", kind):
            raise StoreError(f"account {aid!r} already exists")
        claimed = []
        for n in numbers:
            if not self.r.set(keys.number_account(n), aid, nx=True):
                self.r.delete(keys.account(aid), *[keys.number_account(c) for c in claimed])
                raise StoreError(f"number {n} already belongs to account {self.r.get(keys.number_account(n))}")
            claimed.append(n)
        with self.r.pipeline(transaction=True) as p:  # the account's own keys: one slot, one transaction
            p.hset(keys.account(aid), mapping={"owner": owner, "balance_cents": 0, "held_cents": 0,
                                               "created_ms": now_ms(), **extra})
            if numbers:
                p.sadd(keys.account_numbers(aid), *numbers)
            p.execute()
        self.r.sadd(keys.ACCOUNTS, aid)

    def set_account_language(self, aid: str, language: str) -> None:
        self._set_language(keys.account(aid), f"account {aid}", language)

    def account(self, aid: str) -> Account | None:
        with self.r.pipeline(transaction=True) as p:
            p.hgetall(keys.account(aid))
            p.get(keys.account_month(aid, month_of(now_ms())))
            raw, month = p.execute()
        if not raw:
            return None
        return Account(aid, raw["type"], int(raw["balance_cents"]), int(raw["held_cents"]),
                       int(raw.get("monthly_limit_cents") or 0), int(month or 0), raw.get("inmate", ""))

    def debit_account(self, iid: str) -> Account | None:
        """The inmate's own account, if one was opened."""
        acct = self.account(debit_account_id(iid))
        return acct if acct is not None and acct.type == "inmate_debit" else None

    def account_for_number(self, number: Destination | str) -> Account | None:
        n = stored(number)
        aid = self.r.get(keys.number_account(n)) if n else None
        return self.account(aid) if aid else None

    def adjust(self, aid: str, kind: str, amount_cents: int, note: str = "") -> int:
        """Deposit, refund or credit; returns the new balance."""
        if kind not in ("deposit", "refund", "credit"):
            raise StoreError(f"unknown ledger kind {kind!r}")
        if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
            raise StoreError(f"amount must be a positive whole number of cents, got {amount_cents!r}")
        if kind == "deposit" and amount_cents > MAX_DEPOSIT_CENTS:
            raise StoreError(f"amount {dollars(amount_cents)} is over the {dollars(MAX_DEPOSIT_CENTS)} "
                             "limit for one deposit")
        ok, bal = self._adjust(keys=[keys.account(aid), keys.ledger(aid)],
                               args=[kind, amount_cents, note, now_ms()])
        if ok == -1:
            raise StoreError(f"no account {aid!r}")
        if ok == 0:
            raise StoreError(f"refund of {amount_cents} cents exceeds the {bal} cents available")
        return int(bal)

    def reserve(self, aid: str, call_id: str, amount_cents: int, minutes: int | None = None) -> bool:
        """Hold amount_cents for a call (that pays for `minutes` whole minutes, if given).

        False if the account cannot cover it; AccountExpired if it is flagged expired
        (checked in the same script as the hold, whatever the balance). The call record
        names the account first, so whoever settles the call finds the hold."""
        before = self.r.hget(keys.call(call_id), "account")
        if before and before != aid and self.r.hexists(keys.call_money(before, call_id), "held_cents"):
            raise StoreError(f"call {call_id} already holds funds")
        self.r.hset(keys.call(call_id), "account", aid)
        month = keys.account_month(aid, month_of(now_ms()))
        res = self._reserve(keys=[keys.account(aid), keys.call_money(aid, call_id), month,
                                  keys.account_holds(aid), keys.account_unsynced(aid)],
                            args=[amount_cents, aid, "" if minutes is None else minutes, call_id])
        if res == -1:
            raise StoreError(f"no account {aid!r}")
        if res == -2:
            raise StoreError(f"call {call_id} already holds funds")
        if res == -3:
            raise AccountExpired(aid)
        if res == 1:
            self.sync_call(aid, call_id)
        return res == 1

    def extend_hold(self, aid: str, call_id: str, amount_cents: int, paid_minutes: int) -> str:
        """Hold the next minute of a live call that has paid_minutes held so far.

        Returns "held", "short" (the account cannot cover it), "stale" (paid_minutes
        changed: someone else held it) or "settled" (the call is over)."""
        month = keys.account_month(aid, month_of(now_ms()))
        res = self._extend(keys=[keys.account(aid), keys.call_money(aid, call_id), month,
                                 keys.account_unsynced(aid)], args=[amount_cents, paid_minutes, call_id])
        if res == -1:
            raise StoreError(f"no account {aid!r}")
        if res == 1:
            self.sync_call(aid, call_id)
        return {1: "held", 0: "short", -2: "stale", -3: "settled"}[res]

    def call_money(self, aid: str, call_id: str) -> dict[str, int]:
        """The money of a call as its account's slot has it (the call record holds a copy):
        held_cents, paid_minutes, settled, billed_cents, billed_minutes, ... as integers."""
        raw = self.r.hgetall(keys.call_money(aid, call_id)) if aid else {}
        return {k: int(v) for k, v in raw.items() if k in COPIED and v.lstrip("-").isdigit()}

    def settle(self, call_id: str, aid: str, charge_cents: int, minutes: int, rate: int,
               tax_cents: int = 0, week_of: tuple[str, str] | None = None) -> tuple[bool, int, int]:
        """Returns (settled_now, billed_cents, billed_minutes); a second call is a no-op for the
        money and completes the second step if it was left half-done.
        charge_cents includes tax_cents (recorded on the call for statements).
        A direct_bill charge counts towards the month (UTC) in which the call settles;
        week_of (inmate, ISO week) counts an accepted call towards that weekly quota."""
        if not aid:  # no account: nothing was held, nothing is billed
            first = self.r.hsetnx(keys.call(call_id), "settled", "1")
            if first:
                self.r.hset(keys.call(call_id), mapping={"billed_cents": 0, "billed_minutes": 0, "tax_cents": 0})
            return bool(first), 0, 0
        now = now_ms()
        first, cents, mins = self._settle(
            keys=[keys.call_money(aid, call_id), keys.account(aid), keys.ledger(aid),
                  keys.account_month(aid, month_of(now)), keys.account_holds(aid), keys.account_unsynced(aid)],
            args=[charge_cents, minutes, rate, call_id, now, tax_cents, " ".join(week_of) if week_of else ""],
        )
        self.sync_call(aid, call_id)
        return bool(first), int(cents), int(mins)

    def sync_call(self, aid: str, call_id: str) -> None:
        """The second step of every money change of a call: copy its money to the call record
        and, once settled, count it towards the inmate's weekly quota. Each write is idempotent
        (the same values again; the quota keeps the call id), so a replay after a crash anywhere
        in here changes nothing done before; the account's :unsynced entry goes only at the end."""
        money = self.r.hgetall(keys.call_money(aid, call_id))
        if not money:
            return
        self.r.hset(keys.call(call_id), mapping={**{k: v for k, v in money.items() if k in COPIED and k != "settled"},
                                                 "account": aid})
        if money.get("settled") == "1" and money.get("week"):
            iid, week = money["week"].split(" ", 1)
            self._count_week(keys=[keys.inmate_week(iid, week)], args=[call_id, money.get("billed_minutes", 0)])
        self._synced(keys=[keys.account_unsynced(aid)], args=[call_id, money.get("v", "0")])
        # last: a record that says settled is settled everywhere; cut short before this, the call
        # still looks unsettled and is settled again (the listener's retry or orphan scan)
        if money.get("settled") == "1":
            self.r.hset(keys.call(call_id), "settled", "1")

    def unsynced(self, aid: str) -> dict[str, str]:
        """Calls of the account whose second step is still to do: call id -> money version."""
        return self.r.hgetall(keys.account_unsynced(aid))

    def migrate_money_keys(self, done: dict[str, list[str]]) -> None:
        """Accounts, their numbers, month totals and ledgers stored before hash tags, renamed.
        An account still holding money (calls in progress under the old layout) is left as it
        was and reported: upgrade with no call live."""
        old_ledgers = self.legacy_keys(keys.OLD_LEDGER)
        for aid, found in sorted(self.legacy_keys(keys.OLD_ACCOUNT).items()):
            if int(self.r.hget(keys.OLD_ACCOUNT + aid, "held_cents") or 0):
                done["refused"].append(f"account {aid} holds money for calls in progress")
                continue
            for old in found:
                rest = old[len(keys.OLD_ACCOUNT + aid):]
                self.move_key(old, keys.account(aid) + rest, done)
            for old in old_ledgers.pop(aid, []):
                self.move_key(old, keys.ledger(aid), done)
        for aid, found in old_ledgers.items():  # a ledger whose account is gone: kept, renamed
            for old in found:
                self.move_key(old, keys.ledger(aid), done)

    def ledger(self, aid: str) -> list[dict[str, str]]:
        return [dict(fields, id=eid) for eid, fields in self.r.xrange(keys.ledger(aid))]

    # --- refunds, expiry, automatic credits ------------------------------------
    def refund(self, aid: str, amount_cents: int | None, note: str = "") -> tuple[int, int]:
        """Refund amount_cents, or everything available (balance - held) when None.

        Returns (refunded_cents, new_balance); never takes held or missing money."""
        if amount_cents is not None:
            return amount_cents, self.adjust(aid, "refund", amount_cents, note)
        refunded, bal = self._refund_all(keys=[keys.account(aid), keys.ledger(aid)], args=[note, now_ms()])
        if refunded == -1:
            raise StoreError(f"no account {aid!r}")
        if refunded == 0:
            raise StoreError(f"account {aid} has nothing available to refund")
        return int(refunded), int(bal)

    def account_usable(self, account: "Account | str") -> str | None:
        """Why an existing account may not pay for a new call (a reason code), or None.

        An expired account refuses calls with `account_expired` until a deposit
        reactivates it; the hold itself (reserve) enforces that atomically."""
        aid = account if isinstance(account, str) else account.id
        if self.r.hexists(keys.account(aid), "expired_ms"):
            return "account_expired"
        return None

    def expire_account(self, aid: str, now: int | None = None) -> tuple[str, int]:
        """Flag one account expired if idle INACTIVITY_MS; idempotent, moves no money.

        Returns (state, last_activity_ms), state one of flagged / expired (already) /
        active / in_call / not_expiring."""
        code, last = self._expire(keys=[keys.account(aid), keys.ledger(aid)],
                                  args=[now_ms() if now is None else now, INACTIVITY_MS, EXPIRING_TYPES[0]])
        if code == -1:
            raise StoreError(f"no account {aid!r}")
        return {1: "flagged", 2: "expired", 0: "active", 3: "in_call", -2: "not_expiring"}[code], int(last)

    def expire_accounts(self, now: int | None = None) -> dict[str, list[dict]]:
        """Run expire_account over every account; grouped by state."""
        now = now_ms() if now is None else now
        out: dict[str, list[dict]] = {}
        for aid in sorted(self.r.smembers(keys.ACCOUNTS)):
            try:
                state, last = self.expire_account(aid, now)
            except StoreError:
                continue  # listed but gone: ledger check reports it
            out.setdefault(state, []).append({"account": aid, "last_activity_ms": last})
        return out

    def refunds_due(self) -> list[dict]:
        """Expired accounts that still hold money: the balance is owed back to the payer."""
        aids = sorted(self.r.smembers(keys.ACCOUNTS))
        with self.r.pipeline(transaction=False) as p:
            for aid in aids:
                p.hmget(keys.account(aid), "owner", "balance_cents", "held_cents", "expired_ms",
                        "last_activity_ms")
            rows = p.execute()
        due = []
        for aid, (owner, bal, held, expired, last) in zip(aids, rows):
            if expired is None:
                continue
            available = int(bal or 0) - int(held or 0)
            if available > 0:
                due.append({"account": aid, "owner": owner or "", "refund_due_cents": available,
                            "expired_ms": int(expired), "last_activity_ms": int(last) if last else None})
        return due

    def dispose_expired(self, aid: str, note: str) -> tuple[int, int]:
        """Take an expired account's remaining funds out (ledger kind expiry), e.g. unclaimed
        after the refund was offered. Returns (disposed_cents, new_balance)."""
        amount, bal = self._dispose(keys=[keys.account(aid), keys.ledger(aid)], args=[note, now_ms()])
        if amount == -1:
            raise StoreError(f"no account {aid!r}")
        if amount == -2:
            raise StoreError(f"account {aid} is not expired; its funds cannot be disposed of")
        return int(amount), int(bal)

    def auto_credit(self, call_id: str) -> int:
        """Credit a settled call in full if the system dropped it (system_error) within its first
        minute of bridged time; once only. Returns the cents credited now (0 if none)."""
        rec = self.r.hmget(keys.call(call_id), "account", "reason", "bridged_ms", "ended_ms")
        aid, reason, bridged, ended = rec
        if not aid:
            return 0
        done, cents = self._credit(
            keys=[keys.call_money(aid, call_id), keys.account(aid), keys.ledger(aid), keys.account_unsynced(aid)],
            args=[AUTO_CREDIT_MS, call_id, now_ms(), "system_error in the first minute", reason or "",
                  bridged or "", ended or ""],
        )
        if done == 1:
            self.sync_call(aid, call_id)
        return int(cents) if done == 1 else 0

    def account_numbers(self, aid: str) -> list[str]:
        return sorted(self.r.smembers(keys.account_numbers(aid)))

    def account_fields(self, aid: str) -> dict[str, str] | None:
        """The account hash as stored (owner, created_ms, ...); see account() for the money view."""
        return self.r.hgetall(keys.account(aid)) or None

