"""The Redis store, one module per domain, each owning its keys (all named in ics.keys):

  money       accounts, holds, settlement, the ledger, refunds, expiry, credits (lua/*.lua)
  inmates     inmates, PINs, approved numbers, blocks, privileged numbers, the LIDB table
  facilities  facilities, living units, schedules, lockdowns, the listener's heartbeat
  audit       the audit log

Store is all of them on one connection (the call flow and icsctl hold one Store); the names
callers import are re-exported here.
"""

from __future__ import annotations

from .. import keys
from .audit import Audit
from .base import ID_RE, Lua, StoreError, as_entries, check_id, connect, dest, now_ms, one_line, stored
from .facilities import Facilities
from .inmates import (INMATE_ID_RE, INMATE_STATUSES, LINE_BY_KIND, LINE_TYPES, NUMBER_STATES, PIN_RE,
                      Inmates, pin_hash)
from .money import (ACCOUNT_TYPES, AUTO_CREDIT_MS, EXPIRING_TYPES, INACTIVITY_MS, MAX_DEPOSIT_CENTS, MAX_MONTHLY_LIMIT_CENTS,
                    Account, AccountExpired, Money, debit_account_id, dollars, month_of)

__all__ = [
    "ACCOUNT_TYPES", "AUTO_CREDIT_MS", "EXPIRING_TYPES", "ID_RE", "INACTIVITY_MS", "INMATE_ID_RE",
    "INMATE_STATUSES", "LINE_BY_KIND", "LINE_TYPES", "MAX_DEPOSIT_CENTS", "MAX_MONTHLY_LIMIT_CENTS", "NUMBER_STATES", "PIN_RE",
    "Account", "AccountExpired", "Lua", "as_entries", "Store", "StoreError", "check_id", "connect", "debit_account_id",
    "dest", "dollars", "month_of", "now_ms", "one_line", "pin_hash", "stored",
]


class Store(Money, Inmates, Facilities, Audit):
    """Every domain on one client."""

    def migrate_keys(self) -> dict[str, list[str]]:
        """Rename keys stored before hash tags (ics:account:fam1 -> ics:account:{a:fam1}, ...);
        idempotent, run by icsctl keys migrate (its Redis user may RESTORE and write the old
        names; ics-fastagi's may not). Returns {"migrated": [...], "kept_existing": [...],
        "refused": [...]}."""
        done: dict[str, list[str]] = {"migrated": [], "kept_existing": [], "refused": []}
        self.migrate_money_keys(done)
        self.migrate_inmate_keys(done)
        return done

    def untagged_keys(self) -> list[str]:
        """Keys still named before hash tags (keys.UNTAGGED_PREFIXES), sorted: read-only (SCAN),
        what ics-fastagi checks at start-up."""
        return sorted(key for prefix in keys.UNTAGGED_PREFIXES
                      for found in self.legacy_keys(prefix).values() for key in found)
