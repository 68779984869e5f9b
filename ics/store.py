"""Facilities, inmates, numbers, blocks and accounts in Redis (sync client).

Used by the call flow (one short-lived thread per AGI session) and by icsctl.
Every money change runs in one Lua script, so it is atomic and ledgered in the
same step; see ics.keys for the layout.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping

import redis

from . import keys
from .config import Config, ConfigError, facility_settings

NUMBER_RE = re.compile(r"^[2-9][0-9]{9}$")  # NANP 10-digit, no leading 0/1
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
INMATE_ID_RE = re.compile(r"^[0-9]{4,10}$")  # keyed in on a phone keypad
PIN_RE = re.compile(r"^[0-9]{4,8}$")
PIN_ITERATIONS = 2000  # a keypad PIN has little entropy; the hash only keeps it out of dumps


class StoreError(ValueError):
    """Bad input to a store operation: the message is for a human."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def valid_number(number: str) -> bool:
    return bool(NUMBER_RE.match(number or ""))


def check_id(kind: str, value: str, pattern: re.Pattern = ID_RE) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise StoreError(f"invalid {kind} {value!r}")
    return value


def connect(cfg: Config) -> redis.Redis:
    timeout = cfg["redis"]["timeout_ms"] / 1000
    return redis.Redis.from_url(
        cfg["redis"]["url"], decode_responses=True,
        socket_timeout=timeout, socket_connect_timeout=timeout,
    )


def pin_hash(pin: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), PIN_ITERATIONS).hex()


# --- Lua: every money movement is one atomic script -------------------------

# Hold funds for a call before it rings. Fails (0) if the account cannot cover it.
_RESERVE = """
local acct, call = KEYS[1], KEYS[2]
local amount = tonumber(ARGV[1])
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HEXISTS', call, 'held_cents') == 1 then return -2 end
local bal = tonumber(redis.call('HGET', acct, 'balance_cents') or '0')
local held = tonumber(redis.call('HGET', acct, 'held_cents') or '0')
if bal - held < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HSET', call, 'held_cents', amount, 'account', ARGV[2])
return 1
"""

# Settle a call exactly once: release the hold, charge at most the hold, ledger it.
_SETTLE = """
local call, acct, ledger = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', call, 'settled') == '1' then
  return {0, tonumber(redis.call('HGET', call, 'billed_cents') or '0'),
             tonumber(redis.call('HGET', call, 'billed_minutes') or '0')}
end
local charge, minutes, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', call, 'held_cents') or '0')
if charge > held then
  -- the bridge ran a few ms past the limit the hold paid for: bill the hold
  charge = held
  if rate > 0 then minutes = math.floor(held / rate) else minutes = 0 end
end
if held > 0 then redis.call('HINCRBY', acct, 'held_cents', -held) end
if charge > 0 then
  local bal = redis.call('HINCRBY', acct, 'balance_cents', -charge)
  redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
             'balance_cents', bal, 'call', ARGV[4], 'minutes', minutes, 'ts', ARGV[5])
end
redis.call('HSET', call, 'settled', '1', 'billed_cents', charge, 'billed_minutes', minutes)
return {1, charge, minutes}
"""

# Deposits, refunds and credits: move the balance and write the ledger together.
_ADJUST = """
local acct, ledger = KEYS[1], KEYS[2]
local kind, amount = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', acct) == 0 then return {-1, 0} end
local sign = 1
if kind == 'refund' then sign = -1 end
if sign < 0 then
  local bal = tonumber(redis.call('HGET', acct, 'balance_cents') or '0')
  local held = tonumber(redis.call('HGET', acct, 'held_cents') or '0')
  if bal - held < amount then return {0, bal - held} end
end
local bal = redis.call('HINCRBY', acct, 'balance_cents', sign * amount)
redis.call('XADD', ledger, '*', 'kind', kind, 'amount_cents', amount,
           'balance_cents', bal, 'call', '', 'note', ARGV[3], 'ts', ARGV[4])
return {1, bal}
"""


@dataclass
class Account:
    id: str
    type: str
    balance_cents: int
    held_cents: int

    @property
    def available_cents(self) -> int:
        return self.balance_cents - self.held_cents


class Store:
    def __init__(self, r: redis.Redis, cfg: Config):
        self.r = r
        self.cfg = cfg
        self._reserve = r.register_script(_RESERVE)
        self._settle = r.register_script(_SETTLE)
        self._adjust = r.register_script(_ADJUST)

    # --- facilities --------------------------------------------------------
    def create_facility(self, fid: str, name: str, **overrides: Any) -> None:
        check_id("facility id", fid)
        if not name or any(c in name for c in "\r\n\0"):
            raise StoreError("facility name must be non-empty, one line")
        stored = {k: str(v) for k, v in overrides.items() if v is not None}
        try:
            facility_settings(self.cfg["facility_defaults"], stored, f"facility {fid}")
        except ConfigError as exc:
            raise StoreError(str(exc)) from None
        with self.r.pipeline() as p:
            p.hset(keys.facility(fid), mapping={"name": name, **stored})
            p.sadd(keys.FACILITIES, fid)
            p.execute()

    def facility(self, fid: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.facility(fid))
        if not raw:
            return None
        settings = facility_settings(self.cfg["facility_defaults"], raw, f"facility {fid}")
        settings["id"] = fid
        settings["name"] = raw.get("name", fid)
        return settings

    # --- inmates -----------------------------------------------------------
    def create_inmate(self, iid: str, facility: str, name: str, pin: str) -> None:
        check_id("inmate number", iid, INMATE_ID_RE)
        check_id("PIN", pin, PIN_RE)
        if not self.r.sismember(keys.FACILITIES, facility):
            raise StoreError(f"no facility {facility!r}")
        if not name or any(c in name for c in "\r\n\0"):
            raise StoreError("inmate name must be non-empty, one line")
        salt = secrets.token_hex(8)
        with self.r.pipeline() as p:
            p.hset(keys.inmate(iid), mapping={
                "facility": facility, "name": name, "pin_salt": salt,
                "pin_hash": pin_hash(pin, salt), "pin_locked": "0", "name_recorded": "0",
            })
            p.sadd(keys.INMATES, iid)
            p.execute()

    def inmate(self, iid: str) -> dict[str, str] | None:
        return self.r.hgetall(keys.inmate(iid)) or None

    def check_pin(self, inmate: Mapping[str, str], pin: str) -> bool:
        expected = inmate.get("pin_hash", "")
        return bool(expected) and hmac.compare_digest(pin_hash(pin, inmate["pin_salt"]), expected)

    def pin_failed(self, iid: str, lock_after: int) -> bool:
        """Count a wrong PIN for a known inmate; returns True once the PIN is now locked."""
        failures = self.r.incr(keys.pin_failures(iid))
        if failures >= lock_after:
            self.r.hset(keys.inmate(iid), "pin_locked", "1")
            return True
        return False

    def pin_ok(self, iid: str) -> None:
        self.r.delete(keys.pin_failures(iid))

    def unlock_pin(self, iid: str) -> None:
        if not self.r.exists(keys.inmate(iid)):
            raise StoreError(f"no inmate {iid!r}")
        with self.r.pipeline() as p:
            p.hset(keys.inmate(iid), "pin_locked", "0")
            p.delete(keys.pin_failures(iid))
            p.execute()

    def set_name_recorded(self, iid: str) -> None:
        self.r.hset(keys.inmate(iid), "name_recorded", "1")

    # --- numbers and blocks -------------------------------------------------
    def approve_number(self, iid: str, number: str) -> None:
        if not valid_number(number):
            raise StoreError(f"invalid number {number!r}: 10 digits, not starting with 0 or 1")
        if not self.r.exists(keys.inmate(iid)):
            raise StoreError(f"no inmate {iid!r}")
        self.r.hset(keys.approved(iid), number, "approved")

    def is_approved(self, iid: str, number: str) -> bool:
        return self.r.hget(keys.approved(iid), number) == "approved"

    def block(self, number: str, *, inmate: str | None = None, facility: str | None = None) -> None:
        if not valid_number(number):
            raise StoreError(f"invalid number {number!r}")
        if (inmate is None) == (facility is None):
            raise StoreError("block either for one inmate or for a whole facility")
        key = keys.block_inmate(inmate) if inmate else keys.block_facility(facility)
        self.r.sadd(key, number)

    def unblock(self, number: str, *, inmate: str | None = None, facility: str | None = None) -> bool:
        key = keys.block_inmate(inmate) if inmate else keys.block_facility(facility)
        return bool(self.r.srem(key, number))

    def block_reason(self, iid: str, fid: str, number: str) -> str | None:
        """Which block stops this call, if any. Both sets are read in one round trip."""
        with self.r.pipeline(transaction=False) as p:
            p.sismember(keys.block_inmate(iid), number)
            p.sismember(keys.block_facility(fid), number)
            by_inmate, by_facility = p.execute()
        if by_facility:
            return "blocked_facility"
        if by_inmate:
            return "blocked_inmate"
        return None

    # --- accounts ------------------------------------------------------------
    def create_account(self, aid: str, owner: str, numbers: list[str], kind: str = "prepaid") -> None:
        check_id("account id", aid)
        if kind != "prepaid":
            raise StoreError(f"unsupported account type {kind!r} (prepaid)")
        if self.r.exists(keys.account(aid)):
            raise StoreError(f"account {aid!r} already exists")
        for n in numbers:
            if not valid_number(n):
                raise StoreError(f"invalid number {n!r}")
            other = self.r.get(keys.number_account(n))
            if other:
                raise StoreError(f"number {n} already belongs to account {other}")
        with self.r.pipeline() as p:
            p.hset(keys.account(aid), mapping={
                "type": kind, "owner": owner, "balance_cents": 0, "held_cents": 0,
                "created_ms": now_ms(),
            })
            p.sadd(keys.ACCOUNTS, aid)
            for n in numbers:
                p.set(keys.number_account(n), aid)
                p.sadd(keys.account_numbers(aid), n)
            p.execute()

    def account(self, aid: str) -> Account | None:
        raw = self.r.hgetall(keys.account(aid))
        if not raw:
            return None
        return Account(aid, raw["type"], int(raw["balance_cents"]), int(raw["held_cents"]))

    def account_for_number(self, number: str) -> Account | None:
        aid = self.r.get(keys.number_account(number))
        return self.account(aid) if aid else None

    def adjust(self, aid: str, kind: str, amount_cents: int, note: str = "") -> int:
        """Deposit, refund or credit; returns the new balance."""
        if kind not in ("deposit", "refund", "credit"):
            raise StoreError(f"unknown ledger kind {kind!r}")
        if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
            raise StoreError(f"amount must be a positive whole number of cents, got {amount_cents!r}")
        ok, bal = self._adjust(keys=[keys.account(aid), keys.ledger(aid)],
                               args=[kind, amount_cents, note, now_ms()])
        if ok == -1:
            raise StoreError(f"no account {aid!r}")
        if ok == 0:
            raise StoreError(f"refund of {amount_cents} cents exceeds the {bal} cents available")
        return int(bal)

    def reserve(self, aid: str, call_id: str, amount_cents: int) -> bool:
        res = self._reserve(keys=[keys.account(aid), keys.call(call_id)], args=[amount_cents, aid])
        if res == -1:
            raise StoreError(f"no account {aid!r}")
        if res == -2:
            raise StoreError(f"call {call_id} already holds funds")
        return res == 1

    def settle(self, call_id: str, aid: str, charge_cents: int, minutes: int, rate: int) -> tuple[bool, int, int]:
        """Returns (settled_now, billed_cents, billed_minutes); a second call is a no-op."""
        first, cents, mins = self._settle(
            keys=[keys.call(call_id), keys.account(aid), keys.ledger(aid)],
            args=[charge_cents, minutes, rate, call_id, now_ms()],
        )
        return bool(first), int(cents), int(mins)

    def ledger(self, aid: str) -> list[dict[str, str]]:
        return [dict(fields, id=eid) for eid, fields in self.r.xrange(keys.ledger(aid))]

    # --- listings (read-only, for icsctl) ------------------------------------
    def facilities(self) -> list[str]:
        return sorted(self.r.smembers(keys.FACILITIES))

    def approved_numbers(self, iid: str) -> list[str]:
        return sorted(n for n, state in self.r.hgetall(keys.approved(iid)).items() if state == "approved")

    def blocked_numbers(self, *, inmate: str | None = None, facility: str | None = None) -> list[str]:
        if (inmate is None) == (facility is None):
            raise StoreError("blocks are listed either for one inmate or for a whole facility")
        return sorted(self.r.smembers(keys.block_inmate(inmate) if inmate else keys.block_facility(facility)))

    def account_numbers(self, aid: str) -> list[str]:
        return sorted(self.r.smembers(keys.account_numbers(aid)))

    def account_fields(self, aid: str) -> dict[str, str] | None:
        """The account hash as stored (owner, created_ms, ...); see account() for the money view."""
        return self.r.hgetall(keys.account(aid)) or None

    def pin_failure_count(self, iid: str) -> int:
        return int(self.r.get(keys.pin_failures(iid)) or 0)

    def facility_overrides(self, fid: str) -> dict[str, str]:
        """The settings a facility stores over [facility_defaults] (without its name)."""
        raw = self.r.hgetall(keys.facility(fid))
        raw.pop("name", None)
        return raw
