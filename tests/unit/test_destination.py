"""The one number type (ics/destination.py): what people type becomes one E.164 spelling
with its country and kind, or a NumberError that says what was wrong."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ics.destination import Destination, NumberError, e164, parse


@pytest.mark.parametrize("typed", [
    "3125550100", "(312) 555-0100", "312.555.0100", "312-555-0100", "1 312 555 0100",
    "+1 312 555 0100", "+13125550100", "  3125550100\n",
])
def test_what_people_type_is_one_spelling(typed):
    d = parse(typed)
    assert (d.e164, d.region, d.country_code, d.national, d.dial) == (
        "+13125550100", "US", 1, "3125550100", "3125550100")
    assert d.domestic and not d.short


def test_the_lab_numbers_are_valid_fixed_or_mobile():
    # 555-0100..0199 is the fictional range; the numbering plan data counts it as valid
    for n in range(100, 200):
        assert parse(f"312555{n:04d}").kind == "fixed_line_or_mobile"


@pytest.mark.parametrize("typed, e, kind, region, dial", [
    ("011 44 20 7946 0000", "+442079460000", "fixed_line", "GB", "011442079460000"),
    ("+44 20 7946 0000", "+442079460000", "fixed_line", "GB", "011442079460000"),
    # the cases: toll-free and premium in 011-1 form are what they are
    ("01118005551234", "+18005551234", "toll_free", "US", "8005551234"),
    ("01119005551234", "+19005551234", "premium", "US", "9005551234"),
    # NANP numbers outside the US are international (Jamaica, Toronto)
    ("8769271234", "+18769271234", "fixed_line", "JM", "8769271234"),
    ("4169671111", "+14169671111", "fixed_line_or_mobile", "CA", "4169671111"),
    ("8005551212", "+18005551212", "toll_free", "US", "8005551212"),
    ("9005551212", "+19005551212", "premium", "US", "9005551212"),
    ("7872345678", "+17872345678", "fixed_line_or_mobile", "PR", "7872345678"),
])
def test_country_and_kind(typed, e, kind, region, dial):
    d = parse(typed)
    assert (d.e164, d.kind, d.region, d.dial) == (e, kind, region, dial)
    assert d.domestic == (region in ("US", "PR"))


@pytest.mark.parametrize("typed, kind", [
    ("911", "emergency"), ("112", "emergency"), ("411", "short_code"), ("611", "short_code"),
    ("988", "short_code"), ("0", "short_code"), ("12345", "short_code"), ("*67", "short_code"),
])
def test_short_codes_and_emergency_numbers(typed, kind):
    d = parse(typed)
    assert d.kind == kind and d.short and d.dial == typed
    with pytest.raises(NumberError, match="short code"):
        e164(typed)  # never stored


@pytest.mark.parametrize("typed, why", [
    ("3120550100", "no such area code or exchange"),  # the invalid exchange (NXX 0..)
    ("3121550100", "no such area code or exchange"),
    ("5550100", "dial all 10 digits"),
    ("", "no number"), ("   ", "no number"),
    ("2125550100x", "'x' is not part of a phone number"),
    ("３１２５５５０１００", "is not part of a phone number"),  # unicode digits are refused, not guessed
    ("312\n5550100", "is not part of a phone number"),
    ("1-800-FLOWERS", "'F' is not part of a phone number"),
    ("+1 312 +555", r"\+ only starts"),
    ("9" * 41, "too long"),
    ("011", "too few digits"), ("+999 123456", "no such country code"),
    ("+4487012345678", "wrong number of digits"),
])
def test_refusals_say_what_was_wrong(typed, why):
    with pytest.raises(NumberError, match=why):
        parse(typed)


def test_not_text_is_a_refusal():
    with pytest.raises(NumberError, match="text"):
        parse(3125550100)  # type: ignore[arg-type]


# Hostile input: any text is a Destination or a NumberError, and a Destination's E.164 parses
# back to itself (one spelling however it was typed).
typed_like = st.text(alphabet=st.sampled_from("0123456789 ()-.+*#\n１٣x"), max_size=24)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(max_size=200), typed_like,
                 st.from_regex(r"\A(\+|011)?[0-9 ()\-.]{3,20}\Z"),
                 st.from_regex(r"\A1?[2-9][0-9]{2}[2-9][0-9]{6}\Z")))
def test_any_text_is_a_destination_or_a_clear_refusal(text):
    try:
        d = parse(text)
    except NumberError as exc:
        assert str(exc)
        return
    assert isinstance(d, Destination)
    if not d.short:
        assert d.e164.startswith("+") and d.e164[1:].isdigit()
        assert parse(d.e164) == d  # the stored spelling is a fixed point
        assert parse(d.dial) == d or d.country_code != 1 or not d.domestic
