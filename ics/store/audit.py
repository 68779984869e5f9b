"""The audit log: who did what to which call, when (monitoring, cut-offs, lockdowns).

Keys (ics.keys): ics:audit.
"""

from __future__ import annotations

from .. import keys
from .base import Base, now_ms


class Audit(Base):
    # --- audit log and monitoring sessions ---------------------------------------------
    def audit(self, action: str, by: str, call_id: str = "", detail: str = "") -> str:
        """Append one entry to the audit log (who did what to which call, when)."""
        return self.r.xadd(keys.AUDIT, {"action": action, "by": by, "call": call_id,
                                        "detail": detail, "ts": now_ms()})

    def audit_entries(self, call_id: str | None = None) -> list[dict[str, str]]:
        rows = [dict(f, id=eid) for eid, f in self.r.xrange(keys.AUDIT)]
        return [r for r in rows if call_id is None or r.get("call") == call_id]

