"""The one rating function. Money is integer cents; durations integer milliseconds.

The rate quote played to the called party, the pre-connect balance check, the
bridge's time limit and the bill all come from here, so what a family hears is
what they pay.
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE_MS = 60_000


@dataclass(frozen=True)
class Price:
    minutes: int
    cents: int


def billable_minutes(duration_ms: int) -> int:
    """Whole minutes, rounded up: 1 ms of bridged time is one minute."""
    if duration_ms < 0:
        raise ValueError(f"negative duration {duration_ms}")
    return -(-duration_ms // MINUTE_MS)


def price(rate_cents_per_min: int, duration_ms: int) -> Price:
    if rate_cents_per_min < 0:
        raise ValueError(f"negative rate {rate_cents_per_min}")
    minutes = billable_minutes(duration_ms)
    return Price(minutes=minutes, cents=minutes * rate_cents_per_min)


def quote(rate_cents_per_min: int) -> Price:
    """What one minute costs: the figure read out at the rate-quote key."""
    return price(rate_cents_per_min, MINUTE_MS)


def affordable_minutes(available_cents: int, rate_cents_per_min: int) -> int:
    """Whole minutes the available funds pay for in full (no partial minute, no overdraft)."""
    if rate_cents_per_min == 0:
        raise ValueError("a zero rate needs no balance check")
    return max(0, available_cents) // quote(rate_cents_per_min).cents


def time_limit_ms(facility_limit_s: int, available_cents: int, rate_cents_per_min: int) -> int:
    """The bridge's limit: the smaller of the facility limit and what the balance buys."""
    bought = affordable_minutes(available_cents, rate_cents_per_min) * MINUTE_MS
    return min(facility_limit_s * 1000, bought)
