"""Facilities and policy data: facilities and their settings, living units and their calling
schedules, lockdowns, and whether the AMI listener is up (no call is placed without it).

Keys (ics.keys): ics:facilities, ics:facility:{fid}, ics:units:{fid}, ics:unit:{fid}:{uid},
ics:lockdown:{fid}[:{uid}], ics:listener:alive.
"""

from __future__ import annotations

from typing import Any, Mapping

from .. import keys, policy
from ..config import ConfigError, facility_settings
from .base import Base, StoreError, check_id, now_ms, one_line


class Facilities(Base):
    # --- facilities --------------------------------------------------------
    def check_facility(self, fid: str, name: str, **overrides: Any) -> dict[str, str]:
        """Validate a new facility (id, name, every setting) without writing; returns the
        settings as stored. icsctl runs it before it renders the spoken name."""
        check_id("facility id", fid)
        one_line("facility name", name)
        settings = {k: str(v) for k, v in overrides.items() if v is not None}
        try:
            facility_settings(self.cfg["facility_defaults"], settings, f"facility {fid}")
        except ConfigError as exc:
            raise StoreError(str(exc)) from None
        if self.r.exists(keys.facility(fid)):
            raise StoreError(f"facility {fid} already exists")
        return settings

    def create_facility(self, fid: str, name: str, **overrides: Any) -> None:
        """A new facility; an existing id is refused (the name is claimed first, atomically)."""
        settings = self.check_facility(fid, name, **overrides)
        if not self.r.hsetnx(keys.facility(fid), "name", name):
            raise StoreError(f"facility {fid} already exists")
        if settings:
            self.r.hset(keys.facility(fid), mapping=settings)
        self.r.sadd(keys.FACILITIES, fid)

    def facility(self, fid: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.facility(fid))
        if not raw:
            return None
        settings = facility_settings(self.cfg["facility_defaults"], raw, f"facility {fid}")
        settings["id"] = fid
        settings["name"] = raw.get("name", fid)
        return settings

    # --- living units, inmate status, quotas ----------------------------------
    def create_unit(self, fid: str, uid: str, name: str, schedule: str = "") -> None:
        """A new living unit; an existing one is refused (its name is claimed first, atomically)."""
        check_id("unit id", uid)
        if not self.r.sismember(keys.FACILITIES, fid):
            raise StoreError(f"no facility {fid!r}")
        one_line("unit name", name)
        self._check_schedule(schedule)
        if not self.r.hsetnx(keys.unit(fid, uid), "name", name):
            raise StoreError(f"unit {uid} already exists at facility {fid}")
        self.r.hset(keys.unit(fid, uid), "schedule", schedule)
        self.r.sadd(keys.units(fid), uid)

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

    def schedule_for(self, facility: Mapping[str, Any], inmate: Mapping[str, str]) -> policy.Schedule:
        """The inmate's living unit's schedule, else the facility's."""
        uid = inmate.get("unit", "")
        text = (self.r.hget(keys.unit(facility["id"], uid), "schedule") or "") if uid else ""
        return policy.parse_schedule(text or facility["schedule"])

    # --- lockdown ----------------------------------------------------------------
    def set_lockdown(self, fid: str, uid: str | None, by: str, note: str, end_live: bool) -> None:
        if not self.r.sismember(keys.FACILITIES, fid):
            raise StoreError(f"no facility {fid!r}")
        if uid and not self.r.sismember(keys.units(fid), uid):
            raise StoreError(f"no unit {uid!r} at facility {fid!r}")
        self.r.hset(keys.lockdown(fid, uid), mapping={"since_ms": now_ms(), "by": by, "note": note,
                                                      "end_live": int(bool(end_live))})

    def in_lockdown(self, fid: str, uid: str | None = None) -> bool:
        """This facility (or this one unit, with uid) has a lockdown of its own."""
        return bool(self.r.exists(keys.lockdown(fid, uid)))

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

    def listener_alive(self) -> bool:
        """The AMI listener's heartbeat is fresh (ami.listener beats while logged in to AMI)."""
        return bool(self.r.exists(keys.listener_alive(self.cfg["node"]["id"])))

    # --- listings (read-only, for icsctl) ------------------------------------
    def facilities(self) -> list[str]:
        return sorted(self.r.smembers(keys.FACILITIES))

    def facility_overrides(self, fid: str) -> dict[str, str]:
        """The settings a facility stores over [facility_defaults] (without its name)."""
        raw = self.r.hgetall(keys.facility(fid))
        raw.pop("name", None)
        return raw
