"""Facility policy that decides whether a call may be placed at all: pure functions.

- Destination policy: by the number's kind (ics.destination, from the numbering plan):
  emergency numbers, short codes, toll-free, premium, shared-cost and forwarding
  (personal, pager, UAN, voicemail) numbers are refused whatever the approved list
  says. International numbers are allowed only to the countries the facility lists
  (ics.rating.international_rate).
- Call schedules: per living unit (else the facility's), in the facility's time
  zone, e.g. "mon-fri 08:00-11:30,13:00-21:45; sat,sun 09:00-20:00". An empty
  schedule means any time.
- Weekly quotas for restricted inmates count ISO weeks in the facility's zone.

Nothing here touches Redis; ics.store and the call flow call these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import destination

# --- destinations ---------------------------------------------------------------

# Kinds of number an inmate may never call, whatever the approved list says (the kind comes
# from the numbering plan, ics.destination). Personal, pager, UAN and voicemail numbers
# forward to wherever their owner points them; shared-cost ones charge the called side.
REFUSED_KINDS = {
    destination.EMERGENCY: "emergency_not_allowed",
    destination.SHORT_CODE: "short_code_not_allowed",
    "toll_free": "toll_free_not_allowed",
    "premium": "premium_not_allowed",
    "shared_cost": "number_type_not_allowed",
    "personal": "number_type_not_allowed",
    "pager": "number_type_not_allowed",
    "uan": "number_type_not_allowed",
    "voicemail": "number_type_not_allowed",
}


def destination_refusal(d: destination.Destination) -> str | None:
    """The reason code refusing this destination by its kind alone, or None. Whether an
    international call is allowed (and at what rate) is the facility's: ics.rating."""
    return REFUSED_KINDS.get(d.kind)


# --- time zones ------------------------------------------------------------------

def zone(name: str) -> ZoneInfo:
    """A facility's time zone (IANA name); ValueError if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as America/Chicago)") from None


def local_time(ms: int, tz_name: str) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(zone(tz_name))


def week_of(ms: int, tz_name: str) -> str:
    """The ISO week (facility time) of an epoch-ms time, as YYYYWww: quotas count per week."""
    year, week, _ = local_time(ms, tz_name).isocalendar()
    return f"{year}W{week:02d}"


def local_date(ms: int, tz_name: str) -> str:
    return local_time(ms, tz_name).strftime("%Y-%m-%d")


# --- schedules ---------------------------------------------------------------------

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RE = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")


@dataclass(frozen=True)
class Schedule:
    """Windows per weekday (0 = Monday), minutes since local midnight, [start, end)."""
    windows: tuple[tuple[tuple[int, int], ...], ...]
    text: str

    @property
    def always(self) -> bool:
        return not self.text

    def allows(self, when: datetime) -> bool:
        if self.always:
            return True
        minute = when.hour * 60 + when.minute
        return any(start <= minute < end for start, end in self.windows[when.weekday()])


def _minutes(text: str) -> int:
    m = _TIME_RE.match(text.strip())
    if not m:
        raise ValueError(f"time {text.strip()!r} is not HH:MM (00:00 to 24:00)")
    value = int(m.group(1)) * 60 + int(m.group(2))
    if value > 24 * 60:
        raise ValueError(f"time {text.strip()!r} is after 24:00")
    return value


def _days(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip().lower()
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"day range {part!r}: days are {', '.join(DAYS)}")
            i, j = DAYS.index(a), DAYS.index(b)
            out += list(range(i, j + 1)) if i <= j else list(range(i, 7)) + list(range(0, j + 1))
        elif part in DAYS:
            out.append(DAYS.index(part))
        elif part in ("daily", "all"):
            out += list(range(7))
        else:
            raise ValueError(f"day {part!r}: days are {', '.join(DAYS)} or daily")
    return out


def parse_schedule(text: str) -> Schedule:
    """"mon-fri 08:00-11:30,13:00-21:45; sat,sun 09:00-20:00" -> Schedule; "" = any time.

    Rules are separated by ";"; each names days (mon..sun, ranges, "daily") then one
    or more HH:MM-HH:MM windows. Days not named have no calling time."""
    text = (text or "").strip()
    per_day: list[list[tuple[int, int]]] = [[] for _ in range(7)]
    if not text:
        return Schedule(tuple(() for _ in range(7)), "")
    for rule in text.split(";"):
        rule = rule.strip()
        if not rule:
            continue
        days_text, _, windows_text = rule.partition(" ")
        if not windows_text.strip():
            raise ValueError(f"schedule rule {rule!r}: days then HH:MM-HH:MM windows")
        days = _days(days_text)
        for window in windows_text.replace(" ", "").split(","):
            start_text, sep, end_text = window.partition("-")
            if not sep:
                raise ValueError(f"window {window!r} is not HH:MM-HH:MM")
            start, end = _minutes(start_text), _minutes(end_text)
            if start >= end:
                raise ValueError(f"window {window!r} ends before it starts")
            for d in days:
                per_day[d].append((start, end))
    return Schedule(tuple(tuple(sorted(w)) for w in per_day), text)
