"""Facility policy that decides whether a call may be placed at all: pure functions.

- Destination policy: toll-free, premium-rate (900 / NXX 976), N11 and other short
  codes are refused whatever the approved list says. International numbers are
  allowed only where the facility has a rate for them (ics.rating.class_rate).
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

# --- destinations ---------------------------------------------------------------

TOLL_FREE_NPAS = frozenset({"800", "833", "844", "855", "866", "877", "888"})
PREMIUM_NPAS = frozenset({"900"})
PREMIUM_NXXS = frozenset({"976"})
N11_RE = re.compile(r"^[2-9]11$")
TEN_DIGIT_RE = re.compile(r"^[2-9][0-9]{9}$")
INTERNATIONAL_PREFIX = "011"


def destination_refusal(number: str) -> str | None:
    """The reason code refusing this dialed string by destination alone, or None.

    Short codes (N11 such as 911 or 411, and anything else that is neither a 10-digit
    NANP number nor 011 + an international number) are `short_code_not_allowed`; a
    10-digit toll-free number `toll_free_not_allowed`; 900 and NXX 976
    `premium_not_allowed`."""
    number = number or ""
    if TEN_DIGIT_RE.match(number):
        npa, nxx = number[:3], number[3:6]
        if npa in TOLL_FREE_NPAS:
            return "toll_free_not_allowed"
        if npa in PREMIUM_NPAS or nxx in PREMIUM_NXXS:
            return "premium_not_allowed"
        return None
    if number.startswith(INTERNATIONAL_PREFIX):
        return None  # validity and whether the facility allows it are decided elsewhere
    if N11_RE.match(number) or (number.isdigit() and len(number) < 10) or number[:1] in ("*", "#"):
        return "short_code_not_allowed"
    return None


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
