"""Inmates and their lists: PINs, approved numbers (pending / approved / rejected within the
facility's approved_max), blocks, privileged (attorney) numbers, the LIDB line table, the
inmate's living unit, status and weekly quota, and the migration of numbers to E.164.

Keys (ics.keys): ics:inmates, ics:inmate:{iid} (and :pin_failures, :approved, :week:*),
ics:block:inmate:{iid}, ics:block:facility:{fid}, ics:privileged, ics:lidb:{number}.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any, Mapping

from .. import keys, policy, prompts, reasons
from ..config import parse_responses
from ..destination import Destination
from .base import Base, StoreError, check_id, dest, now_ms, stored

INMATE_ID_RE = re.compile(r"^[0-9]{4,10}$")  # keyed in on a phone keypad
PIN_RE = re.compile(r"^[0-9]{4,8}$")
PIN_ITERATIONS = 2000  # a keypad PIN has little entropy; the hash only keeps it out of dumps
NUMBER_STATES = ("pending", "approved", "rejected")
INMATE_STATUSES = ("active", "restricted", "suspended")
MAX_QUOTA = 10_000
LINE_TYPES = ("landline", "wireless", "voip")
LINE_BY_KIND = {"mobile": "wireless", "pager": "wireless", "voip": "voip"}  # LIDB fallback by number type


def check_language(language: str) -> None:
    if language and language not in prompts.TEXTS:
        raise StoreError(f"language {language!r} has no prompts (known: {', '.join(prompts.LANGUAGES)})")


def pin_hash(pin: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), PIN_ITERATIONS).hex()


class Inmates(Base):
    LUA = {"_number_state": "number_state.lua", "_give_back_courtesy": "give_back_courtesy.lua"}

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
            p.delete(keys.pin_failures(iid))
            return existed

        existed = self.r.transaction(create, key, value_from_callable=True)  # the inmate's slot only
        self.r.sadd(keys.INMATES, iid)
        return existed

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
        with self.r.pipeline(transaction=True) as p:
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
            check_language(language)
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

    def _set_language(self, key: str, what: str, language: str) -> None:
        """language ("" = unset: the facility's) on an existing inmate or account hash."""
        if not self.r.exists(key):
            raise StoreError(f"no {what}")
        check_language(language)
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
        return bool(self._give_back_courtesy(keys=[keys.courtesy(dest(number).e164)], args=[call_id]))

    def set_number_rules(self, number: Destination | str, text: str) -> dict[str, str]:
        """Responses for calls to number over its facility's ('dial_tone=flag, hold=off'; an
        attorney's PBX with music on hold). "" clears them. Returns what is now stored."""
        try:
            wanted = parse_responses(text)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        key = keys.number_rules(dest(number).e164)
        with self.r.pipeline(transaction=True) as p:  # one key
            p.delete(key)
            if wanted:
                p.hset(key, mapping=wanted)
            p.execute()
        return wanted

    def number_rules(self, number: Destination | str) -> dict[str, str]:
        return self.r.hgetall(keys.number_rules(dest(number).e164))

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

    def week_usage(self, iid: str, week: str) -> tuple[int, int]:
        """(accepted calls, billed minutes) of the inmate in an ISO week."""
        calls, minutes = self.r.hmget(keys.inmate_week(iid, week), "calls", "minutes")
        return int(calls or 0), int(minutes or 0)

    # --- privileged (attorney) numbers -----------------------------------------------
    def set_privileged(self, number: Destination | str, note: str) -> None:
        n = dest(number).e164
        if not note or any(c in note for c in "\r\n\0"):
            raise StoreError("a privileged number needs a note (who it is), one line")
        self.r.hset(keys.PRIVILEGED, n, note)

    def remove_privileged(self, number: Destination | str) -> bool:
        n = stored(number)
        return bool(n and self.r.hdel(keys.PRIVILEGED, n))

    def privileged(self, number: Destination | str) -> str | None:
        """The note of a privileged (attorney) number, or None."""
        n = stored(number)
        return self.r.hget(keys.PRIVILEGED, n) if n else None

    def privileged_numbers(self) -> dict[str, str]:
        return dict(sorted(self.r.hgetall(keys.PRIVILEGED).items()))

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
                        with self.r.pipeline(transaction=True) as p:
                            p.hsetnx(key, new, value)
                            p.hdel(key, old)
                            fresh, _ = p.execute()
                        done["migrated" if fresh else "kept_existing"].append(f"{key} {old} -> {new}")
        for pattern in keys.NUMBER_SETS:
            for key in self.r.scan_iter(match=pattern, count=500):
                for old in self.r.smembers(key):
                    new = legacy(old)
                    if new:
                        with self.r.pipeline(transaction=True) as p:
                            p.sadd(key, new)
                            p.srem(key, old)
                            fresh, _ = p.execute()
                        done["migrated" if fresh else "kept_existing"].append(f"{key} {old} -> {new}")
        for prefix in keys.NUMBER_KEY_PREFIXES:
            for key in self.r.scan_iter(match=prefix + "*", count=500):
                new = legacy(key[len(prefix):])
                if new:
                    # (not RENAMENX: on a cluster the two names are in different slots; not
                    # RESTORE: ics-fastagi runs this as its Redis user, which may not)
                    if not self.r.exists(prefix + new):
                        self.copy_plain_key(key, prefix + new)
                        self.r.delete(key)
                        done["migrated"].append(f"{key} -> {prefix}{new}")
                    else:
                        self.r.delete(key)
                        done["kept_existing"].append(f"{key} -> {prefix}{new}")
        return done

    def migrate_inmate_keys(self, done: dict[str, list[str]]) -> None:
        """Inmates, PIN failures, approved lists and weekly counts stored before hash tags, renamed."""
        for iid, found in sorted(self.legacy_keys(keys.OLD_INMATE).items()):
            for old in found:
                self.move_key(old, keys.inmate(iid) + old[len(keys.OLD_INMATE + iid):], done)

    def approved_numbers(self, iid: str) -> list[str]:
        """Callable numbers only (state approved)."""
        return sorted(n for n, state in self.r.hgetall(keys.approved(iid)).items() if state == "approved")

    def blocked_numbers(self, *, inmate: str | None = None, facility: str | None = None) -> list[str]:
        if (inmate is None) == (facility is None):
            raise StoreError("blocks are listed either for one inmate or for a whole facility")
        return sorted(self.r.smembers(keys.block_inmate(inmate) if inmate else keys.block_facility(facility)))

    def pin_failure_count(self, iid: str) -> int:
        return int(self.r.get(keys.pin_failures(iid)) or 0)

