"""The one rating function. Money is integer cents; durations integer milliseconds.

The rate quote played to the called party, the pre-connect balance (or
direct-bill limit) check, the bridge's time limit and the bill all come from
here, so what a family hears is what they pay. No float ever touches money.

Rates are per destination class (local, in-state, interstate) chosen per facility, and
per country for international calls (a facility lists the countries it allows, each
with its rate and the cost of terminating a minute there); taxes are passed through in basis points, computed once on
the call total (round half up). There are no ancillary fees of any kind.
The FCC 25-75 interim caps (compliance from 2026-04-06) are enforced on every
domestic rate when a facility or the defaults are loaded (`check_caps`); an
international rate is capped, as the FCC's international rule has it, at the
domestic cap plus that country's termination cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import phonenumbers

from .destination import DOMESTIC_REGIONS, Destination

MINUTE_MS = 60_000
BPS = 10_000  # basis points in 100 %

CLASSES = ("local", "instate", "interstate", "international")
FACILITY_TYPES = ("prison", "jail")
MAX_FACILITY_COST_CENTS = 2  # FCC 25-75 facility-cost additive, per minute
MILLICENTS = 1000  # per cent: termination costs are fractions of a cent per minute

# FCC 25-75 interim audio caps, cents per minute, before the facility-cost additive.
PRISON_CAP_CENTS = 11
JAIL_CAPS_CENTS = ((1000, 10), (350, 12), (100, 13), (50, 15), (0, 19))  # (ADP at least, cap)


@dataclass(frozen=True)
class Price:
    """A call's price in integer cents: subtotal = minutes x rate; tax once on the subtotal."""
    minutes: int
    rate_cents: int = 0
    subtotal_cents: int = 0
    tax_cents: int = 0

    @property
    def total_cents(self) -> int:
        return self.subtotal_cents + self.tax_cents

    @property
    def cents(self) -> int:
        """What is billed (held, charged): the total, tax included."""
        return self.total_cents


# Asterisk's own backstops (Dial's L() past the limit, TIMEOUT(absolute) on the called
# leg past the paid minutes) end a call the AMI listener failed to end this long
# after its time; settlement never bills that overrun.
BACKSTOP_MS = 8000


def billable_minutes(duration_ms: int) -> int:
    """Whole minutes, rounded up: 1 ms of bridged time is one minute."""
    if duration_ms < 0:
        raise ValueError(f"negative duration {duration_ms}")
    return -(-duration_ms // MINUTE_MS)


def tax_cents(subtotal_cents: int, tax_bps: int) -> int:
    """Tax on a call total, rounded half up, integer arithmetic only."""
    return (subtotal_cents * tax_bps + BPS // 2) // BPS


def price(rate_cents_per_min: int, duration_ms: int, tax_bps: int = 0) -> Price:
    """The price of duration_ms at rate_cents_per_min, plus tax_bps of taxes on the total."""
    if rate_cents_per_min < 0:
        raise ValueError(f"negative rate {rate_cents_per_min}")
    if tax_bps < 0:
        raise ValueError(f"negative tax {tax_bps} bps")
    minutes = billable_minutes(duration_ms)
    subtotal = minutes * rate_cents_per_min
    return Price(minutes=minutes, rate_cents=rate_cents_per_min, subtotal_cents=subtotal,
                 tax_cents=tax_cents(subtotal, tax_bps))


def quote(rate_cents_per_min: int) -> Price:
    """What one minute costs before tax: the per-minute figure read out at the rate-quote key
    (the prompt adds "plus any taxes"). It is the subtotal of a one-minute bill."""
    return price(rate_cents_per_min, MINUTE_MS)


def affordable_minutes(available_cents: int, rate_cents_per_min: int, tax_bps: int = 0) -> int:
    """Whole minutes whose total (tax included) the available cents pay in full (no overdraft)."""
    if rate_cents_per_min == 0:
        raise ValueError("a zero rate needs no balance check")
    available = max(0, available_cents)
    # the estimate ignores rounding; tax is monotonic, so step to the exact answer
    m = available * BPS // (rate_cents_per_min * (BPS + tax_bps))
    while price(rate_cents_per_min, (m + 1) * MINUTE_MS, tax_bps).cents <= available:
        m += 1
    while m > 0 and price(rate_cents_per_min, m * MINUTE_MS, tax_bps).cents > available:
        m -= 1
    return m


def time_limit_ms(facility_limit_s: int, available_cents: int, rate_cents_per_min: int,
                  tax_bps: int = 0) -> int:
    """The bridge's limit: the smaller of the facility limit and what the funds buy."""
    bought = affordable_minutes(available_cents, rate_cents_per_min, tax_bps) * MINUTE_MS
    return min(facility_limit_s * 1000, bought)


# --- destination classes and caps ------------------------------------------------------

def parse_npas(text: str) -> frozenset[str]:
    """"312, 773" -> {"312", "773"}; raises ValueError naming a bad entry."""
    out = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        # a NANP area code: three digits, the first 2-9 (config text, not a dialled number)
        if not (len(part) == 3 and part.isascii() and part.isdigit() and part[0] not in "01"):
            raise ValueError(f"{part!r} is not a 3-digit area code")
        out.add(part)
    return frozenset(out)


@dataclass(frozen=True)
class CountryRate:
    """An international destination a facility allows: its rate (what the call costs, cents
    per minute) and the cost of terminating a minute there (millicents), which the FCC's
    international rule adds to the domestic cap."""
    region: str
    rate_cents: int
    termination_millicents: int


def parse_international(text: str) -> dict[str, CountryRate]:
    """"GB:12:1200, JM:15:4000" -> per country (ISO 3166 code) its rate in cents/min and its
    termination cost in millicents/min; "" allows no international call. ValueError names
    a bad entry."""
    out: dict[str, CountryRate] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        fields = [f.strip() for f in part.split(":")]
        if len(fields) != 3 or not all(f.isascii() and f.isdigit() for f in fields[1:]):
            raise ValueError(f"{part!r} is not COUNTRY:RATE_CENTS:TERMINATION_MILLICENTS (e.g. GB:12:1200)")
        region, rate, term = fields[0].upper(), int(fields[1]), int(fields[2])
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{part!r}: {fields[0]!r} is not a country code (ISO 3166, e.g. GB, MX, JM)")
        if region in DOMESTIC_REGIONS:
            raise ValueError(f"{part!r}: calls to {region} are domestic, rated by local_npas / state_npas")
        if rate <= 0:
            raise ValueError(f"{part!r}: the rate must be at least 1 cent per minute")
        if region in out:
            raise ValueError(f"{region} is listed twice")
        out[region] = CountryRate(region, rate, term)
    return out


def destination_class(facility: Mapping[str, Any], d: Destination) -> str:
    """local / instate / interstate for a domestic number by its area code; international
    for any other country (Canada and the Caribbean included, NANP or not)."""
    if not d.domestic:
        return "international"
    npa = d.national[:3]  # every domestic region is in the NANP: 10 digits, area code first
    if npa in parse_npas(facility["local_npas"]):
        return "local"
    if npa in parse_npas(facility["state_npas"]):
        return "instate"
    return "interstate"


def class_rate(facility: Mapping[str, Any], cls: str) -> int:
    """Cents per minute for a domestic class; one without its own rate uses rate_cents_per_min."""
    if cls not in CLASSES or cls == "international":
        raise ValueError(f"{cls!r} is not a domestic destination class")
    return facility[f"rate_{cls}_cents"] or facility["rate_cents_per_min"]


def rate_for(facility: Mapping[str, Any], d: Destination) -> tuple[str, int | None]:
    """(destination class, cents per minute) for a call to d; the rate is None for a country
    the facility does not list: the call is not allowed."""
    cls = destination_class(facility, d)
    if cls != "international":
        return cls, class_rate(facility, cls)
    country = parse_international(facility["international"]).get(d.region)
    return cls, country.rate_cents if country else None


def fcc_cap(facility_type: str, adp: int) -> tuple[int, str]:
    """FCC 25-75 interim cap (cents/min, before the additive) and why it applies."""
    if facility_type == "prison":
        return PRISON_CAP_CENTS, "prison"
    if facility_type != "jail":
        raise ValueError(f"facility type must be prison or jail, got {facility_type!r}")
    for floor, cap in JAIL_CAPS_CENTS:
        if adp >= floor:
            return cap, f"jail with average daily population {adp}"
    raise ValueError(f"average daily population must not be negative, got {adp}")


def check_caps(facility: Mapping[str, Any]) -> None:
    """Every domestic rate at or under its FCC cap plus the facility-cost additive, every
    international rate at or under that plus its country's termination cost; raises
    ValueError naming the rate, the cap and why."""
    cost = facility["facility_cost_cents"]
    base, why = fcc_cap(facility["type"], facility["adp"])
    cap = base + cost
    for key in ("rate_cents_per_min", "rate_local_cents", "rate_instate_cents", "rate_interstate_cents"):
        if facility[key] > cap:
            raise ValueError(
                f"{key} {facility[key]} is above the FCC cap of {cap} cents/min "
                f"({base} for a {why} under FCC 25-75, plus facility_cost_cents {cost})")
    for c in parse_international(facility["international"]).values():
        if c.rate_cents * MILLICENTS > cap * MILLICENTS + c.termination_millicents:
            raise ValueError(
                f"international {c.region} rate {c.rate_cents} is above its cap of {cap} cents/min plus "
                f"{c.termination_millicents} millicents termination ({base} for a {why} under FCC 25-75, "
                f"plus facility_cost_cents {cost}, plus the cost of terminating a minute in {c.region})")
