from hypothesis import given
from hypothesis import strategies as st

from ics import rating

ms = st.integers(min_value=0, max_value=4 * 3600 * 1000)
rate = st.integers(min_value=1, max_value=500)
cents = st.integers(min_value=0, max_value=10_000_00)


def test_whole_minutes_round_up():
    assert rating.billable_minutes(0) == 0
    assert rating.billable_minutes(1) == 1
    assert rating.billable_minutes(60_000) == 1
    assert rating.billable_minutes(60_001) == 2
    assert rating.price(11, 5_000) == rating.Price(minutes=1, rate_cents=11, subtotal_cents=11)
    assert rating.price(11, 125_000).cents == 33 and rating.price(11, 125_000).minutes == 3


@given(rate)
def test_the_quote_is_what_one_minute_bills(r):
    assert rating.quote(r).cents == rating.price(r, 60_000).cents == r


@given(ms, rate)
def test_bill_is_minutes_times_the_quoted_rate(d, r):
    p = rating.price(r, d)
    assert p.cents == p.minutes * rating.quote(r).cents
    assert (p.minutes - 1) * 60_000 < d <= p.minutes * 60_000 or d == 0


@given(cents, rate, st.integers(min_value=60, max_value=7200))
def test_time_limit_never_buys_more_than_the_balance(available, r, facility_s):
    limit = rating.time_limit_ms(facility_s, available, r)
    assert limit <= facility_s * 1000
    assert limit % 60_000 == 0 or limit == facility_s * 1000
    assert rating.price(r, limit).cents <= available or limit == 0
