"""Rating by destination class, tax and the FCC 25-75 caps (ics.rating, ics.config).

Money is integer cents throughout; these are properties over any duration, rate
and tax, plus each cap tier refused at load and at facility creation.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ics import destination, config, rating
from ics.config import ConfigError, facility_settings

ms = st.integers(min_value=0, max_value=4 * 3600 * 1000)
rate = st.integers(min_value=1, max_value=500)
tax = st.integers(min_value=0, max_value=config.MAX_TAX_BPS)
cents = st.integers(min_value=0, max_value=10_000_00)

DEFAULTS = config.DEFAULTS["facility_defaults"]


def settings(**stored) -> dict:
    return facility_settings(DEFAULTS, {k: str(v) for k, v in stored.items()}, "facility t")


# --- price, quote, tax -----------------------------------------------------------------

@given(rate, tax)
def test_the_quote_is_the_one_minute_bill_before_tax(r, t):
    one = rating.price(r, rating.MINUTE_MS, t)
    assert rating.quote(r).cents == one.subtotal_cents == one.rate_cents == r
    assert one.cents == r + rating.tax_cents(r, t)


# Bills worked out by hand at the FCC 25-75 cap rates (README: prison 11; jail by ADP
# 1000+ 10, 350-999 12, 100-349 13, 50-99 15, under 50 19; plus facility_cost_cents):
# (rate, bridged ms, tax bps) -> Price(minutes, rate, subtotal, tax)
BILLS = [
    (11, 0, 0, rating.Price(0, 11, 0, 0)),            # prison: nothing bridged, nothing billed
    (11, 1, 0, rating.Price(1, 11, 11, 0)),           # 1 ms is a whole minute
    (11, 60_000, 0, rating.Price(1, 11, 11, 0)),      # exactly one minute
    (11, 60_001, 0, rating.Price(2, 11, 22, 0)),      # 1 ms into the second
    (10, 900_000, 0, rating.Price(15, 10, 150, 0)),   # jail ADP 1000+, 15 min
    (12, 200_000, 625, rating.Price(4, 12, 48, 3)),   # jail 350-999, 3:20 -> 4 min; 48 x 6.25 % = 3.0
    (21, 840_500, 750, rating.Price(15, 21, 315, 24)),  # jail < 50 (19) + 2 cost; 315 x 7.5 % = 23.625 -> 24
    (10, 300_000, 900, rating.Price(5, 10, 50, 5)),   # 50 x 9 % = 4.5 -> 5 (half up)
    (10, 300_000, 899, rating.Price(5, 10, 50, 4)),   # 4.495 -> 4
    (15, 1, 1000, rating.Price(1, 15, 15, 2)),        # jail 50-99: 1.5 -> 2
    (13, 119_999, 0, rating.Price(2, 13, 26, 0)),     # jail 100-349
]


@pytest.mark.parametrize("r, d, t, expected", BILLS)
def test_bills_at_the_cap_rates_worked_out_by_hand(r, d, t, expected):
    assert rating.price(r, d, t) == expected
    assert rating.price(r, d, t).cents == expected.subtotal_cents + expected.tax_cents


@pytest.mark.parametrize("available, r, t, facility_s, limit_ms", [
    (500, 11, 750, 3600, 42 * 60_000),   # 42 min: 462 + 35 tax = 497; 43 min: 473 + 35 = 508 > 500
    (500, 11, 750, 900, 900_000),        # the facility's 15 min come first
    (100, 21, 750, 3600, 4 * 60_000),    # 4 min: 84 + 6 = 90; 5 min: 105 > 100
    (22, 11, 0, 3600, 2 * 60_000),       # exactly two minutes
    (21, 11, 0, 3600, 60_000),           # one cent short of the second
    (10, 11, 0, 3600, 0),                # not even one minute
])
def test_time_limits_worked_out_by_hand(available, r, t, facility_s, limit_ms):
    assert rating.time_limit_ms(facility_s, available, r, t) == limit_ms


@given(ms, ms, rate, tax)
def test_totals_conserve_and_never_decrease_with_time(d1, d2, r, t):
    a, b = rating.price(r, min(d1, d2), t), rating.price(r, max(d1, d2), t)
    assert a.cents <= b.cents and a.minutes <= b.minutes
    # splitting a call's minutes never changes the subtotal; tax is computed once on the total
    whole = rating.price(r, (a.minutes + b.minutes) * rating.MINUTE_MS, t)
    assert whole.subtotal_cents == a.subtotal_cents + b.subtotal_cents


def test_tax_rounds_half_up():
    assert rating.tax_cents(100, 50) == 1  # 0.5 cent -> 1
    assert rating.tax_cents(100, 49) == 0  # 0.49 cent -> 0
    assert rating.price(11, 3 * 60_000, 1000) == rating.Price(3, 11, 33, 3)  # 3.3 -> 3


@given(cents, rate, tax, st.integers(min_value=60, max_value=7200))
def test_time_limit_never_buys_more_than_the_funds(available, r, t, facility_s):
    limit = rating.time_limit_ms(facility_s, available, r, t)
    assert limit <= facility_s * 1000
    assert rating.price(r, limit, t).cents <= available
    m = rating.affordable_minutes(available, r, t)
    assert rating.price(r, (m + 1) * rating.MINUTE_MS, t).cents > available  # the largest such


# --- destination classes ------------------------------------------------------------------

def test_destination_class_by_area_code_and_country():
    fac = settings(local_npas="312,773", state_npas="217, 630", rate_local_cents=5,
                   rate_instate_cents=8, international="GB:11:1200, JM:12:4000")
    cases = {"3125550100": ("local", 5), "7735550100": ("local", 5), "2175550100": ("instate", 8),
             "2125550100": ("interstate", 11), "011442079460000": ("international", 11),
             # the case: Jamaica and Toronto are NANP numbers but international calls
             "8769271234": ("international", 12), "4169671111": ("international", None),
             "7872345678": ("interstate", 11)}  # Puerto Rico is domestic (FCC)
    for number, want in cases.items():
        assert rating.rate_for(fac, destination.parse(number)) == want, number


def test_international_rates_are_capped_per_country_at_the_domestic_cap_plus_termination():
    assert rating.parse_international(settings()["international"]) == {}  # none by default
    # a prison: cap 11 c/min (+ facility cost 1) + the country's termination cost
    fac = settings(facility_cost_cents=1, international="GB:12:0, MX:13:1000, JM:16:4000")
    assert rating.rate_for(fac, destination.parse("+52 55 1234 5678")) == ("international", 13)
    with pytest.raises(ConfigError, match=r"international GB rate 13 is above its cap of 12 cents/min plus 999"):
        settings(facility_cost_cents=1, international="GB:13:999")
    settings(facility_cost_cents=1, international="GB:13:1000")  # exactly at the cap
    with pytest.raises(ConfigError, match="is above"):
        settings(type="jail", adp=2000, international="JM:15:4999")  # 10 + 4.999 < 15
    for bad, why in (("GB", "COUNTRY:RATE_CENTS"), ("XX:5:0", "not a country code"), ("US:5:0", "domestic"),
                     ("PR:5:0", "domestic"), ("GB:0:0", "at least 1 cent"), ("GB:5:1.5", "COUNTRY:RATE"),
                     ("GB:5:0,gb:6:0", "listed twice"), ("GB:-5:0", "COUNTRY:RATE")):
        with pytest.raises(ConfigError, match=why):
            settings(international=bad)


def test_bad_area_codes_and_overlaps_are_refused():
    with pytest.raises(ConfigError, match="local_npas.*'31' is not a 3-digit area code"):
        settings(local_npas="31")
    with pytest.raises(ConfigError, match="312 are in both"):
        settings(local_npas="312", state_npas="312")


# --- FCC 25-75 caps --------------------------------------------------------------------------

TIERS = [("prison", 0, 11), ("prison", 5000, 11), ("jail", 1000, 10), ("jail", 5000, 10),
         ("jail", 999, 12), ("jail", 350, 12), ("jail", 349, 13), ("jail", 100, 13),
         ("jail", 99, 15), ("jail", 50, 15), ("jail", 49, 19), ("jail", 0, 19)]


@pytest.mark.parametrize("kind, adp, cap", TIERS)
@pytest.mark.parametrize("cost", [0, 1, 2])
@pytest.mark.parametrize("key", ["rate_cents_per_min", "rate_local_cents", "rate_instate_cents",
                                 "rate_interstate_cents"])
def test_each_cap_tier_with_the_additive(kind, adp, cap, cost, key):
    base = dict(type=kind, adp=adp, facility_cost_cents=cost, rate_cents_per_min=min(cap, 10))
    assert settings(**{**base, key: cap + cost})[key] == cap + cost  # at the cap: fine
    with pytest.raises(ConfigError) as err:
        settings(**{**base, key: cap + cost + 1})
    msg = str(err.value)
    assert f"{key} {cap + cost + 1} is above the FCC cap of {cap + cost} cents/min" in msg
    assert f"({cap} for a {kind}" in msg and f"facility_cost_cents {cost}" in msg


def test_defaults_over_the_cap_stop_start_up():
    with pytest.raises(ConfigError, match="facility_defaults: rate_cents_per_min 11 is above the FCC cap of 10"):
        config.load(environ={"ICS_FACILITY_DEFAULTS_TYPE": "jail", "ICS_FACILITY_DEFAULTS_ADP": "1500"})
    cfg = config.load(environ={"ICS_FACILITY_DEFAULTS_TYPE": "jail", "ICS_FACILITY_DEFAULTS_ADP": "1500",
                               "ICS_FACILITY_DEFAULTS_FACILITY_COST_CENTS": "1"})
    assert cfg["facility_defaults"]["facility_cost_cents"] == 1


@pytest.mark.parametrize("stored, message", [
    ({"type": "county"}, "type must be prison or jail"),
    ({"facility_cost_cents": 3}, "facility_cost_cents is at most 2"),
    ({"tax_bps": 5001}, "tax_bps is basis points"),
    ({"adp": -1}, "adp must not be negative"),
    ({"rate_instate_cents": -1}, "rate_instate_cents must not be negative"),
])
def test_bad_rating_settings(stored, message):
    with pytest.raises(ConfigError, match=message):
        settings(**stored)
