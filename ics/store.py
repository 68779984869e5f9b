"""Facilities, inmates, numbers, blocks, accounts and the LIDB table in Redis (sync client).

Money is integer cents everywhere (balances, holds, limits, charges).

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

from . import destination, keys, metrics, policy, prompts, reasons
from .config import Config, ConfigError, facility_settings, parse_responses
from .destination import Destination, NumberError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
INMATE_ID_RE = re.compile(r"^[0-9]{4,10}$")  # keyed in on a phone keypad
PIN_RE = re.compile(r"^[0-9]{4,8}$")
PIN_ITERATIONS = 2000  # a keypad PIN has little entropy; the hash only keeps it out of dumps


class StoreError(ValueError):
    """Bad input to a store operation: the message is for a human."""


class AccountExpired(StoreError):
    """The account is flagged expired (FCC 64.6130): it holds nothing for a call."""

    def __init__(self, aid: str):
        super().__init__(f"account {aid} is expired; a deposit reactivates it")
        self.account = aid


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dest(number: Destination | str) -> Destination:
    """A number given as a Destination or as typed (parsed here, once): every number the
    store keeps is a Destination's E.164, so one number has one spelling in Redis."""
    if isinstance(number, Destination):
        return number
    try:
        d = destination.parse(number)
    except NumberError as exc:
        raise StoreError(f"invalid number: {exc}") from None
    if d.short:
        raise StoreError(f"invalid number: {d.e164} is a short code ({d.kind.replace('_', ' ')}), "
                         "not a phone number")
    return d


def stored(number: Destination | str) -> str | None:
    """The stored spelling to look a number up by; None for text that is no number (found nowhere)."""
    try:
        return dest(number).e164
    except StoreError:
        return None


ACCOUNT_TYPES = ("prepaid", "direct_bill", "inmate_debit")
NUMBER_STATES = ("pending", "approved", "rejected")
INMATE_STATUSES = ("active", "restricted", "suspended")
MAX_QUOTA = 10_000
LINE_TYPES = ("landline", "wireless", "voip")
LINE_BY_KIND = {"mobile": "wireless", "pager": "wireless", "voip": "voip"}  # LIDB fallback by number type
MAX_MONTHLY_LIMIT_CENTS = 100_000_00


def month_of(ms: int) -> str:
    """The billing month (UTC) of an epoch-ms time, as YYYYMM."""
    return time.strftime("%Y%m", time.gmtime(ms / 1000))


def debit_account_id(iid: str) -> str:
    """The inmate's own (inmate_debit) account id."""
    return f"debit-{iid}"


def _check_language(language: str) -> None:
    if language and language not in prompts.TEXTS:
        raise StoreError(f"language {language!r} has no prompts (known: {', '.join(prompts.LANGUAGES)})")


def check_id(kind: str, value: str, pattern: re.Pattern = ID_RE) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise StoreError(f"invalid {kind} {value!r}")
    return value


class CountedRedis(redis.Redis):
    """redis.Redis that counts failed commands (ics_redis_errors_total). A script missing from
    the cache (NOSCRIPT: redis-py loads it and retries) is no failure."""

    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)
        except redis.exceptions.NoScriptError:
            raise
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
            raise


def connect(cfg: Config) -> redis.Redis:
    """The service's Redis client, as its own ACL user (redis.username / password) when set, over TLS
    for a rediss:// url (redis.tls_ca)."""
    c = cfg["redis"]
    timeout = c["timeout_ms"] / 1000
    extra = {}
    if c["username"] or c["password"]:
        extra.update(username=c["username"] or None, password=c["password"] or None)
    if c["url"].startswith("rediss://"):
        extra.update(ssl_cert_reqs="required", ssl_ca_certs=c["tls_ca"] or None)
    return CountedRedis.from_url(c["url"], decode_responses=True,
                                 socket_timeout=timeout, socket_connect_timeout=timeout, **extra)


def pin_hash(pin: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), PIN_ITERATIONS).hex()


# --- Lua: every money movement is one atomic script -------------------------

# What an account can still spend (a Lua function shared by the hold scripts).
# A direct_bill account has no balance to spend: what it can cover is its monthly
# limit minus this month's billed total (month key) minus what its calls hold.
_AVAILABLE = """
local function available(acct, month)
  local a = redis.call('HMGET', acct, 'type', 'balance_cents', 'held_cents', 'monthly_limit_cents')
  if a[1] == 'direct_bill' then
    return tonumber(a[4] or '0') - tonumber(redis.call('GET', month) or '0') - tonumber(a[3] or '0')
  end
  return tonumber(a[2] or '0') - tonumber(a[3] or '0')
end
"""

# Hold funds for a call before it rings. Fails (0) if the account cannot cover it,
# refuses (-3) an account flagged expired (expired_ms, cleared by a deposit).
# ARGV[3], when not empty, is how many whole minutes the hold pays for.
_RESERVE = _AVAILABLE + """
local acct, call, month = KEYS[1], KEYS[2], KEYS[3]
local amount = tonumber(ARGV[1])
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HEXISTS', call, 'held_cents') == 1 then return -2 end
if redis.call('HEXISTS', acct, 'expired_ms') == 1 then return -3 end  -- flagged expired: no calls
if available(acct, month) < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HSET', call, 'held_cents', amount, 'account', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', call, 'paid_minutes', ARGV[3]) end
return 1
"""

# Hold one more minute for a live call, before that minute starts. ARGV[2] is the
# number of paid minutes the caller saw: a second listener (or a retry after a
# restart) that saw the same number finds it changed (-2) and holds nothing twice.
_EXTEND = _AVAILABLE + """
local acct, call, month = KEYS[1], KEYS[2], KEYS[3]
local amount = tonumber(ARGV[1])
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HGET', call, 'settled') == '1' then return -3 end
if redis.call('HGET', call, 'paid_minutes') ~= ARGV[2] then return -2 end
if available(acct, month) < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HINCRBY', call, 'held_cents', amount)
redis.call('HINCRBY', call, 'paid_minutes', 1)
return 1
"""

# Settle a call exactly once: release the hold, charge at most the hold, ledger it.
# A direct_bill charge also adds to the month's billed total (KEYS[4]), in the same
# once-only step; its balance goes negative: what is owed, paid by deposits.
_SETTLE = """
local call, acct, ledger, month = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', call, 'settled') == '1' then
  return {0, tonumber(redis.call('HGET', call, 'billed_cents') or '0'),
             tonumber(redis.call('HGET', call, 'billed_minutes') or '0')}
end
local charge, minutes, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', call, 'held_cents') or '0')
local clamped = charge > held
if clamped then
  -- the bridge ran past the limit the hold paid for: bill the hold (its tax split is unknown)
  charge = held
  if rate > 0 then minutes = math.floor(held / rate) else minutes = 0 end
end
if held > 0 then redis.call('HINCRBY', acct, 'held_cents', -held) end
if charge > 0 then
  local bal = redis.call('HINCRBY', acct, 'balance_cents', -charge)
  if redis.call('HGET', acct, 'type') == 'direct_bill' then
    local m = redis.call('INCRBY', month, charge)
    redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
               'balance_cents', bal, 'call', ARGV[4], 'minutes', minutes, 'ts', ARGV[5],
               'month_billed_cents', m)
  else
    redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
               'balance_cents', bal, 'call', ARGV[4], 'minutes', minutes, 'ts', ARGV[5])
  end
end
redis.call('HSET', call, 'settled', '1', 'billed_cents', charge, 'billed_minutes', minutes)
if not clamped then redis.call('HSET', call, 'tax_cents', tonumber(ARGV[6] or '0')) end
if KEYS[5] then
  -- an accepted call counts towards the inmate's weekly quota in the same once-only step
  redis.call('HINCRBY', KEYS[5], 'calls', 1)
  redis.call('HINCRBY', KEYS[5], 'minutes', minutes)
  redis.call('EXPIRE', KEYS[5], 5184000)
end
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
if kind == 'deposit' then redis.call('HDEL', acct, 'expired_ms') end  -- a deposit reactivates
redis.call('XADD', ledger, '*', 'kind', kind, 'amount_cents', amount,
           'balance_cents', bal, 'call', '', 'note', ARGV[3], 'ts', ARGV[4])
return {1, bal}
"""

# Refund everything available (balance - held), decided inside the script so no call's hold is touched.
_REFUND_ALL = """
local acct, ledger = KEYS[1], KEYS[2]
if redis.call('EXISTS', acct) == 0 then return {-1, 0} end
local bal = tonumber(redis.call('HGET', acct, 'balance_cents') or '0')
local held = tonumber(redis.call('HGET', acct, 'held_cents') or '0')
local amount = bal - held
if amount <= 0 then return {0, bal} end
bal = redis.call('HINCRBY', acct, 'balance_cents', -amount)
redis.call('XADD', ledger, '*', 'kind', 'refund', 'amount_cents', amount,
           'balance_cents', bal, 'call', '', 'note', ARGV[1], 'ts', ARGV[2])
return {amount, bal}
"""

# Flag an idle account expired (FCC 64.6130): no money moves. Last activity is the newest of
# creation, the newest deposit and the newest charge (a paid call). Returns {code, last_activity_ms}:
# 1 flagged now, 2 already expired, 0 still active, 3 a call holds funds, -1 no account, -2 other type.
_EXPIRE = """
local acct, ledger = KEYS[1], KEYS[2]
local now, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = redis.call('HMGET', acct, 'type', 'created_ms', 'held_cents', 'expired_ms')
if not a[1] then return {-1, 0} end
if a[1] ~= ARGV[3] then return {-2, 0} end
local last = tonumber(a[2] or '0') or 0
local hi = '+'
local done = false
while not done do
  local page = redis.call('XREVRANGE', ledger, hi, '-', 'COUNT', 100)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    local kind, ts
    for i = 1, #e[2], 2 do
      if e[2][i] == 'kind' then kind = e[2][i + 1] elseif e[2][i] == 'ts' then ts = e[2][i + 1] end
    end
    if kind == 'charge' or kind == 'deposit' then
      local t = tonumber(ts or '') or tonumber(string.match(e[1], '^(%d+)'))
      if t > last then last = t end
      done = true
      break
    end
    hi = '(' .. e[1]
  end
end
if a[4] then return {2, last} end
if tonumber(a[3] or '0') > 0 then return {3, last} end
if now - last < idle then return {0, last} end
redis.call('HSET', acct, 'expired_ms', now, 'last_activity_ms', last)
return {1, last}
"""

# Dispose of an expired account's remaining funds (ledger kind expiry): only once flagged expired.
_DISPOSE = """
local acct, ledger = KEYS[1], KEYS[2]
local a = redis.call('HMGET', acct, 'balance_cents', 'held_cents', 'expired_ms')
if not a[1] then return {-1, 0} end
if not a[3] then return {-2, 0} end
local amount = tonumber(a[1]) - tonumber(a[2] or '0')
if amount <= 0 then return {0, tonumber(a[1])} end
local bal = redis.call('HINCRBY', acct, 'balance_cents', -amount)
redis.call('XADD', ledger, '*', 'kind', 'expiry', 'amount_cents', amount,
           'balance_cents', bal, 'call', '', 'note', ARGV[1], 'ts', ARGV[2])
return {amount, bal}
"""

# Credit a settled call in full, once, when the system itself dropped it early (reason system_error,
# bridged at most ARGV[1] ms). Returns {1, cents} when credited now, {0, cents already credited or 0}.
_AUTO_CREDIT = """
local call, acct, ledger = KEYS[1], KEYS[2], KEYS[3]
local c = redis.call('HMGET', call, 'settled', 'reason', 'bridged_ms', 'ended_ms', 'billed_cents',
                     'credited_cents')
if c[6] then return {0, tonumber(c[6])} end
if c[1] ~= '1' or c[2] ~= 'system_error' then return {0, 0} end
local bridged, ended = tonumber(c[3] or ''), tonumber(c[4] or '')
if not bridged or not ended or ended - bridged > tonumber(ARGV[1]) then return {0, 0} end
local amount = tonumber(c[5] or '0') or 0
if amount <= 0 or redis.call('EXISTS', acct) == 0 then return {0, 0} end
local bal = redis.call('HINCRBY', acct, 'balance_cents', amount)
redis.call('XADD', ledger, '*', 'kind', 'credit', 'amount_cents', amount, 'balance_cents', bal,
           'call', ARGV[2], 'note', 'auto credit: system drop ' .. ARGV[2], 'ts', ARGV[3])
redis.call('HSET', call, 'credited_cents', amount, 'credit_reason', ARGV[4])
return {1, amount}
"""

# Set a number's approval state; pending + approved stay within ARGV[3] (the facility's
# approved_max). Returns {1, previous state or ''} or {-1, previous} when over the limit.
_NUMBER_STATE = """
local list, number, state, limit = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local before = redis.call('HGET', list, number) or ''
local counts = function(s) return s == 'pending' or s == 'approved' end
if counts(state) and not counts(before) then
  local n = 0
  for _, s in ipairs(redis.call('HVALS', list)) do if counts(s) then n = n + 1 end end
  if n >= limit then return {-1, before} end
end
redis.call('HSET', list, number, state)
return {1, before}
"""

INACTIVITY_MS = 180 * 86_400_000  # FCC 64.6130: no disposal before 180 days of inactivity
EXPIRING_TYPES = ("prepaid",)
AUTO_CREDIT_MS = 60_000  # a system drop within the first minute of bridged time is credited in full


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


class Store:
    def __init__(self, r: redis.Redis, cfg: Config):
        self.r = r
        self.cfg = cfg
        self._reserve = r.register_script(_RESERVE)
        self._extend = r.register_script(_EXTEND)
        self._settle = r.register_script(_SETTLE)
        self._adjust = r.register_script(_ADJUST)
        self._refund_all = r.register_script(_REFUND_ALL)
        self._expire = r.register_script(_EXPIRE)
        self._dispose = r.register_script(_DISPOSE)
        self._auto_credit = r.register_script(_AUTO_CREDIT)
        self._number_state = r.register_script(_NUMBER_STATE)

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
    def create_inmate(self, iid: str, facility: str, name: str, pin: str, replace: bool = False) -> bool:
        """Create an inmate; an existing inmate number is refused (StoreError) unless
        replace, which sets a new PIN, name and facility and keeps the rest (approved
        numbers, status, unit). Returns True if the inmate existed (was replaced)."""
        check_id("inmate number", iid, INMATE_ID_RE)
        check_id("PIN", pin, PIN_RE)
        if not self.r.sismember(keys.FACILITIES, facility):
            raise StoreError(f"no facility {facility!r}")
        if not name or any(c in name for c in "\r\n\0"):
            raise StoreError("inmate name must be non-empty, one line")
        salt = secrets.token_hex(8)
        key = keys.inmate(iid)

        def create(p) -> bool:  # WATCH key: a concurrent create of the same number retries
            existed = bool(p.exists(key))
            if existed and not replace:
                raise StoreError(f"inmate {iid} already exists (--replace to replace its PIN and name)")
            p.multi()
            p.hset(key, mapping={
                "facility": facility, "name": name, "pin_salt": salt,
                "pin_hash": pin_hash(pin, salt), "pin_locked": "0", "name_recorded": "0",
            })
            p.sadd(keys.INMATES, iid)
            p.delete(keys.pin_failures(iid))
            return existed

        return self.r.transaction(create, key, value_from_callable=True)

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
    def approve_number(self, iid: str, number: str) -> str:
        """Staff approval: the number becomes callable (pending or new -> approved).
        Returns the state it had before ("" if it was not listed)."""
        return self.set_number_state(iid, number, "approved")

    def set_number_state(self, iid: str, number: str, state: str) -> str:
        """pending (asked for, not callable), approved or rejected. Pending and approved
        numbers together are at most the facility's approved_max, checked atomically.
        Returns the previous state ("" if the number was not listed)."""
        if state not in NUMBER_STATES:
            raise StoreError(f"number state is one of {', '.join(NUMBER_STATES)}, got {state!r}")
        d = dest(number)
        refused = policy.destination_refusal(d)
        if refused:
            raise StoreError(f"{d.e164} cannot be approved: {reasons.describe(refused)}")
        inmate = self.inmate(iid)
        if inmate is None:
            raise StoreError(f"no inmate {iid!r}")
        fac = self.facility(inmate.get("facility", ""))
        limit = fac["approved_max"] if fac else self.cfg["facility_defaults"]["approved_max"]
        code, before = self._number_state(keys=[keys.approved(iid)], args=[d.e164, state, limit])
        if code == -1:
            raise StoreError(f"inmate {iid} already has {limit} pending or approved numbers "
                             f"(the facility's approved_max): reject or remove one first")
        return before

    def number_state(self, iid: str, number: Destination | str) -> str | None:
        n = stored(number)
        return self.r.hget(keys.approved(iid), n) if n else None

    def remove_number(self, iid: str, number: Destination | str) -> bool:
        n = stored(number)
        return bool(n and self.r.hdel(keys.approved(iid), n))

    def number_states(self, iid: str) -> dict[str, str]:
        return dict(sorted(self.r.hgetall(keys.approved(iid)).items()))

    def is_approved(self, iid: str, number: Destination | str) -> bool:
        return self.number_state(iid, number) == "approved"

    def block(self, number: Destination | str, *, inmate: str | None = None, facility: str | None = None) -> None:
        n = dest(number).e164
        if (inmate is None) == (facility is None):
            raise StoreError("block either for one inmate or for a whole facility")
        key = keys.block_inmate(inmate) if inmate else keys.block_facility(facility)
        self.r.sadd(key, n)

    def unblock(self, number: Destination | str, *, inmate: str | None = None,
                facility: str | None = None) -> bool:
        n = stored(number)
        key = keys.block_inmate(inmate) if inmate else keys.block_facility(facility)
        return bool(n and self.r.srem(key, n))

    def block_reason(self, iid: str, fid: str, number: Destination | str) -> str | None:
        """Which block stops this call, if any. Both sets are read in one round trip."""
        n = stored(number)
        if n is None:
            return None
        with self.r.pipeline(transaction=False) as p:
            p.sismember(keys.block_inmate(iid), n)
            p.sismember(keys.block_facility(fid), n)
            by_inmate, by_facility = p.execute()
        if by_facility:
            return "blocked_facility"
        if by_inmate:
            return "blocked_inmate"
        return None

    # --- what a number is to us: language, free, unrecorded, TTY (ics:numinfo) -----------
    NUMBER_FLAGS = ("free", "unrecorded", "tty")

    def set_number_info(self, number: Destination | str, *, language: str | None = None,
                        note: str | None = None, **flags: bool) -> dict[str, str]:
        """Set a number's language ("" clears it) and flags (free, unrecorded, tty)."""
        d = dest(number)
        fields: dict[str, Any] = {}
        if language is not None:
            _check_language(language)
            fields["language"] = language
        for flag, on in flags.items():
            if flag not in self.NUMBER_FLAGS:
                raise StoreError(f"unknown number flag {flag!r} ({', '.join(self.NUMBER_FLAGS)})")
            if on is not None:
                fields[flag] = int(bool(on))
        if note is not None:
            if any(c in note for c in "\r\n\0"):
                raise StoreError("note must be one line")
            fields["note"] = note
        if fields:
            self.r.hset(keys.numinfo(d.e164), mapping=fields)
        return self.number_info(d)

    def number_info(self, number: Destination | str) -> dict[str, str]:
        return self.r.hgetall(keys.numinfo(dest(number).e164))

    def set_inmate_language(self, iid: str, language: str) -> None:
        self._set_language(keys.inmate(iid), f"inmate {iid}", language)

    def set_account_language(self, aid: str, language: str) -> None:
        self._set_language(keys.account(aid), f"account {aid}", language)

    def _set_language(self, key: str, what: str, language: str) -> None:
        """language ("" = unset: the facility's) on an existing inmate or account hash."""
        if not self.r.exists(key):
            raise StoreError(f"no {what}")
        _check_language(language)
        self.r.hset(key, "language", language)

    def called_language(self, number: Destination | str, facility: Mapping[str, Any]) -> str:
        """What the called party hears first: their number's language, else their account's,
        else the facility's."""
        lang = self.number_info(number).get("language")
        if not lang:
            aid = self.r.get(keys.number_account(dest(number).e164))
            lang = self.r.hget(keys.account(aid), "language") if aid else None
        return lang or facility["language"]

    def take_courtesy(self, number: Destination | str, call_id: str) -> bool:
        """The number's one free courtesy call, for call_id: False if it was used."""
        return bool(self.r.set(keys.courtesy(dest(number).e164), call_id, nx=True))

    def give_back_courtesy(self, number: Destination | str, call_id: str) -> bool:
        """A courtesy call never bridged does not use it up (only call_id's own claim is removed)."""
        key = keys.courtesy(dest(number).e164)
        return bool(self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                                "end return 0", 1, key, call_id))

    # --- LIDB (line information, a local table standing in for a LIDB query) ----
    def set_lidb(self, number: Destination | str, line_type: str, collect_block: bool = False,
                 new_number: bool = False) -> None:
        d = dest(number)
        if d.country_code != 1:
            raise StoreError(f"{d.e164}: the line table holds North American (+1) numbers only")
        if line_type not in LINE_TYPES:
            raise StoreError(f"line type must be one of {', '.join(LINE_TYPES)}, got {line_type!r}")
        self.r.hset(keys.lidb(d.e164), mapping={
            "line_type": line_type, "collect_block": int(bool(collect_block)),
            "new_number": int(bool(new_number)), "updated_ms": now_ms()})

    def lidb(self, number: Destination | str) -> dict[str, Any]:
        """A number's line record. A number not in the table (known=False) has no collect
        block and no new-number restriction, and the line type its number type says: mobile
        (or pager) is wireless, VoIP is voip, anything else (US numbers do not tell fixed from
        mobile) a landline."""
        d = dest(number)
        raw = self.r.hgetall(keys.lidb(d.e164))
        return {"number": d.e164, "known": bool(raw), "line_type": raw.get("line_type", LINE_BY_KIND.get(d.kind, "landline")),
                "collect_block": raw.get("collect_block") == "1", "new_number": raw.get("new_number") == "1"}

    def collect_problem(self, number: Destination | str) -> str | None:
        """Why a number cannot be billed collect / direct (None if it can): only a
        landline without a collect block or a new-number restriction can."""
        line = self.lidb(number)
        n = line["number"]
        if line["line_type"] != "landline":
            return f"{n} is a {line['line_type']} line"
        if line["collect_block"]:
            return f"{n} has a collect-call block"
        if line["new_number"]:
            return f"{n} has a new-number restriction"
        return None

    # --- accounts ------------------------------------------------------------
    def create_account(self, aid: str, owner: str, numbers: list[str], kind: str = "prepaid", *,
                       monthly_limit_cents: int | None = None, inmate: str | None = None) -> None:
        """prepaid: numbers it pays for, funded by deposits. direct_bill: landline numbers
        only (LIDB), billed up to monthly_limit_cents a month. inmate_debit: the inmate's
        own account, id debit-<inmate>, no numbers. All money integer cents."""
        check_id("account id", aid)
        if kind not in ACCOUNT_TYPES:
            raise StoreError(f"unsupported account type {kind!r} ({', '.join(ACCOUNT_TYPES)})")
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
        with self.r.pipeline() as p:
            p.hset(keys.account(aid), mapping={
                "type": kind, "owner": owner, "balance_cents": 0, "held_cents": 0,
                "created_ms": now_ms(), **extra,
            })
            p.sadd(keys.ACCOUNTS, aid)
            for n in numbers:
                p.set(keys.number_account(n), aid)
                p.sadd(keys.account_numbers(aid), n)
            p.execute()

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
        (checked in the same script as the hold, whatever the balance)."""
        month = keys.account_month(aid, month_of(now_ms()))
        res = self._reserve(keys=[keys.account(aid), keys.call(call_id), month],
                            args=[amount_cents, aid, "" if minutes is None else minutes])
        if res == -1:
            raise StoreError(f"no account {aid!r}")
        if res == -2:
            raise StoreError(f"call {call_id} already holds funds")
        if res == -3:
            raise AccountExpired(aid)
        return res == 1

    def extend_hold(self, aid: str, call_id: str, amount_cents: int, paid_minutes: int) -> str:
        """Hold the next minute of a live call that has paid_minutes held so far.

        Returns "held", "short" (the account cannot cover it), "stale" (paid_minutes
        changed: someone else held it) or "settled" (the call is over)."""
        month = keys.account_month(aid, month_of(now_ms()))
        res = self._extend(keys=[keys.account(aid), keys.call(call_id), month], args=[amount_cents, paid_minutes])
        if res == -1:
            raise StoreError(f"no account {aid!r}")
        return {1: "held", 0: "short", -2: "stale", -3: "settled"}[res]

    def settle(self, call_id: str, aid: str, charge_cents: int, minutes: int, rate: int,
               tax_cents: int = 0, week_of: tuple[str, str] | None = None) -> tuple[bool, int, int]:
        """Returns (settled_now, billed_cents, billed_minutes); a second call is a no-op.
        charge_cents includes tax_cents (recorded on the call for statements).
        A direct_bill charge counts towards the month (UTC) in which the call settles;
        week_of (inmate, ISO week) counts an accepted call towards that weekly quota."""
        now = now_ms()
        week = [keys.inmate_week(*week_of)] if week_of else []
        first, cents, mins = self._settle(
            keys=[keys.call(call_id), keys.account(aid), keys.ledger(aid),
                  keys.account_month(aid, month_of(now)), *week],
            args=[charge_cents, minutes, rate, call_id, now, tax_cents],
        )
        return bool(first), int(cents), int(mins)

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
        aid = self.r.hget(keys.call(call_id), "account")
        if not aid:
            return 0
        done, cents = self._auto_credit(
            keys=[keys.call(call_id), keys.account(aid), keys.ledger(aid)],
            args=[AUTO_CREDIT_MS, call_id, now_ms(), "system_error in the first minute"],
        )
        return int(cents) if done == 1 else 0

    # --- living units, inmate status, quotas ----------------------------------
    def create_unit(self, fid: str, uid: str, name: str, schedule: str = "") -> None:
        check_id("unit id", uid)
        if not self.r.sismember(keys.FACILITIES, fid):
            raise StoreError(f"no facility {fid!r}")
        if not name or any(c in name for c in "\r\n\0"):
            raise StoreError("unit name must be non-empty, one line")
        self._check_schedule(schedule)
        with self.r.pipeline() as p:
            p.hset(keys.unit(fid, uid), mapping={"name": name, "schedule": schedule})
            p.sadd(keys.units(fid), uid)
            p.execute()

    def set_unit_schedule(self, fid: str, uid: str, schedule: str) -> None:
        if not self.r.sismember(keys.units(fid), uid):
            raise StoreError(f"no unit {uid!r} at facility {fid!r}")
        self._check_schedule(schedule)
        self.r.hset(keys.unit(fid, uid), "schedule", schedule)

    @staticmethod
    def _check_schedule(schedule: str) -> None:
        try:
            policy.parse_schedule(schedule)
        except ValueError as exc:
            raise StoreError(f"schedule: {exc}") from None

    def unit(self, fid: str, uid: str) -> dict[str, str] | None:
        return self.r.hgetall(keys.unit(fid, uid)) or None

    def units(self, fid: str) -> list[str]:
        return sorted(self.r.smembers(keys.units(fid)))

    def set_inmate_unit(self, iid: str, uid: str) -> None:
        inmate = self.inmate(iid)
        if inmate is None:
            raise StoreError(f"no inmate {iid!r}")
        if uid and not self.r.sismember(keys.units(inmate["facility"]), uid):
            raise StoreError(f"no unit {uid!r} at facility {inmate['facility']!r}")
        self.r.hset(keys.inmate(iid), "unit", uid)

    def set_inmate_status(self, iid: str, status: str, quota_calls_week: int = 0,
                          quota_minutes_week: int = 0) -> None:
        """active, restricted (a weekly quota of calls and/or minutes; 0 = no limit of that
        kind, at least one is needed) or suspended (no calls)."""
        if status not in INMATE_STATUSES:
            raise StoreError(f"status is one of {', '.join(INMATE_STATUSES)}, got {status!r}")
        for what, n in (("calls", quota_calls_week), ("minutes", quota_minutes_week)):
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_QUOTA:
                raise StoreError(f"weekly {what} quota is a whole number 0 to {MAX_QUOTA}, got {n!r}")
        if status == "restricted" and not (quota_calls_week or quota_minutes_week):
            raise StoreError("a restricted inmate needs a weekly quota of calls or minutes")
        if status != "restricted" and (quota_calls_week or quota_minutes_week):
            raise StoreError("only a restricted inmate has a weekly quota")
        if not self.r.exists(keys.inmate(iid)):
            raise StoreError(f"no inmate {iid!r}")
        self.r.hset(keys.inmate(iid), mapping={"status": status, "quota_calls_week": quota_calls_week,
                                               "quota_minutes_week": quota_minutes_week})

    def schedule_for(self, facility: Mapping[str, Any], inmate: Mapping[str, str]) -> policy.Schedule:
        """The inmate's living unit's schedule, else the facility's."""
        uid = inmate.get("unit", "")
        text = (self.r.hget(keys.unit(facility["id"], uid), "schedule") or "") if uid else ""
        return policy.parse_schedule(text or facility["schedule"])

    def week_usage(self, iid: str, week: str) -> tuple[int, int]:
        """(accepted calls, billed minutes) of the inmate in an ISO week."""
        calls, minutes = self.r.hmget(keys.inmate_week(iid, week), "calls", "minutes")
        return int(calls or 0), int(minutes or 0)

    # --- lockdown ----------------------------------------------------------------
    def set_lockdown(self, fid: str, uid: str | None, by: str, note: str, end_live: bool) -> None:
        if not self.r.sismember(keys.FACILITIES, fid):
            raise StoreError(f"no facility {fid!r}")
        if uid and not self.r.sismember(keys.units(fid), uid):
            raise StoreError(f"no unit {uid!r} at facility {fid!r}")
        self.r.hset(keys.lockdown(fid, uid), mapping={"since_ms": now_ms(), "by": by, "note": note,
                                                      "end_live": int(bool(end_live))})

    def clear_lockdown(self, fid: str, uid: str | None) -> bool:
        return bool(self.r.delete(keys.lockdown(fid, uid)))

    def lockdown_for(self, fid: str, uid: str = "") -> dict[str, str] | None:
        """The lockdown that stops a call from this facility / unit (facility-wide first)."""
        with self.r.pipeline(transaction=False) as p:
            p.hgetall(keys.lockdown(fid))
            p.hgetall(keys.lockdown(fid, uid) if uid else keys.lockdown(fid))
            whole, unit = p.execute()
        if whole:
            return {**whole, "scope": "facility"}
        if uid and unit:
            return {**unit, "scope": f"unit {uid}"}
        return None

    # --- privileged (attorney) numbers -----------------------------------------------
    def set_privileged(self, number: Destination | str, note: str) -> None:
        n = dest(number).e164
        if not note or any(c in note for c in "\r\n\0"):
            raise StoreError("a privileged number needs a note (who it is), one line")
        self.r.hset(keys.PRIVILEGED, n, note)

    def remove_privileged(self, number: Destination | str) -> bool:
        n = stored(number)
        return bool(n and self.r.hdel(keys.PRIVILEGED, n))

    def set_number_rules(self, number: Destination | str, text: str) -> dict[str, str]:
        """Responses for calls to number over its facility's ('dial_tone=flag, hold=off'; an
        attorney's PBX with music on hold). "" clears them. Returns what is now stored."""
        try:
            wanted = parse_responses(text)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        key = keys.number_rules(dest(number).e164)
        with self.r.pipeline() as p:
            p.delete(key)
            if wanted:
                p.hset(key, mapping=wanted)
            p.execute()
        return wanted

    def number_rules(self, number: Destination | str) -> dict[str, str]:
        return self.r.hgetall(keys.number_rules(dest(number).e164))

    def listener_alive(self) -> bool:
        """The AMI listener's heartbeat is fresh (ami.listener beats while logged in to AMI)."""
        return bool(self.r.exists(keys.listener_alive(self.cfg["node"]["id"])))

    def privileged(self, number: Destination | str) -> str | None:
        """The note of a privileged (attorney) number, or None."""
        n = stored(number)
        return self.r.hget(keys.PRIVILEGED, n) if n else None

    def privileged_numbers(self) -> dict[str, str]:
        return dict(sorted(self.r.hgetall(keys.PRIVILEGED).items()))

    # --- audit log and monitoring sessions ---------------------------------------------
    def audit(self, action: str, by: str, call_id: str = "", detail: str = "") -> str:
        """Append one entry to the audit log (who did what to which call, when)."""
        return self.r.xadd(keys.AUDIT, {"action": action, "by": by, "call": call_id,
                                        "detail": detail, "ts": now_ms()})

    def audit_entries(self, call_id: str | None = None) -> list[dict[str, str]]:
        rows = [dict(f, id=eid) for eid, f in self.r.xrange(keys.AUDIT)]
        return [r for r in rows if call_id is None or r.get("call") == call_id]

    # --- numbers stored before E.164 ----------------------------------------------------
    def migrate_numbers(self) -> dict[str, list[str]]:
        """Rewrite every number kept in an older spelling (3125550100, 01144...) as E.164, in
        place; idempotent, so it runs at every FastAGI start. A number whose E.164 form is
        already there keeps that entry (the old one is dropped: never two spellings); text
        that is no number is left as it was and reported. Returns {"migrated": [...],
        "kept_existing": [...], "unreadable": [...]}, each "key old -> new" or "key old"."""
        done: dict[str, list[str]] = {"migrated": [], "kept_existing": [], "unreadable": []}

        def legacy(text: str) -> str | None:  # the E.164 an old spelling stands for, or None
            if text.startswith("+"):
                return None
            n = stored(text)
            if n is None:
                done["unreadable"].append(text)
            return n

        for pattern in keys.NUMBER_HASHES:
            for key in self.r.scan_iter(match=pattern, count=500):
                for old, value in self.r.hgetall(key).items():
                    new = legacy(old)
                    if new:
                        with self.r.pipeline() as p:
                            p.hsetnx(key, new, value)
                            p.hdel(key, old)
                            fresh, _ = p.execute()
                        done["migrated" if fresh else "kept_existing"].append(f"{key} {old} -> {new}")
        for pattern in keys.NUMBER_SETS:
            for key in self.r.scan_iter(match=pattern, count=500):
                for old in self.r.smembers(key):
                    new = legacy(old)
                    if new:
                        with self.r.pipeline() as p:
                            p.sadd(key, new)
                            p.srem(key, old)
                            fresh, _ = p.execute()
                        done["migrated" if fresh else "kept_existing"].append(f"{key} {old} -> {new}")
        for prefix in keys.NUMBER_KEY_PREFIXES:
            for key in self.r.scan_iter(match=prefix + "*", count=500):
                new = legacy(key[len(prefix):])
                if new:
                    if self.r.renamenx(key, prefix + new):
                        done["migrated"].append(f"{key} -> {prefix}{new}")
                    else:
                        self.r.delete(key)
                        done["kept_existing"].append(f"{key} -> {prefix}{new}")
        return done

    # --- listings (read-only, for icsctl) ------------------------------------
    def facilities(self) -> list[str]:
        return sorted(self.r.smembers(keys.FACILITIES))

    def approved_numbers(self, iid: str) -> list[str]:
        """Callable numbers only (state approved)."""
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
