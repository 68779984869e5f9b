"""One number type: what a phone number is, read from the numbering plan (phonenumbers).

Every number enters the system through parse(): approved-list requests, the dialled
extension, account, privileged, blocked and LIDB numbers, the facility caller ID, icsctl.
It is stored and shown in E.164 (+13125550100), so one number has one spelling in Redis.
Policy (ics.policy), rating (ics.rating), the LIDB fallback (ics.store) and the dial
template read the Destination's kind and region; nothing else looks at the digits.

What is accepted: what people type for a US number ("(312) 555-0100", "312.555.0100",
"1 312 555 0100", "+1 312 555 0100"), an international number with 011 or + ("011 44 20
7946 0000", "+44 20 7946 0000"), and short codes of up to 6 digits (911, 411), which
are parsed only to be refused. Anything else raises NumberError saying what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType as T
from phonenumbers import shortnumberinfo

HOME_REGION = "US"  # a number without + or 011 is read as dialled in the US
# FCC: a call from the US to its territories is interstate, not international
DOMESTIC_REGIONS = frozenset({"US", "PR", "VI", "GU", "AS", "MP"})
MAX_TEXT = 40  # longer than any number typed with spaces: refused before the parser sees it
MAX_SHORT_CODE = 6  # digits; a full number (NANP 10, E.164 up to 15) is never this short
TYPED = frozenset("0123456789 ()-.+")
KEYPAD_CODES = frozenset("0123456789*#")  # *67, #31#: feature codes, refused as short codes

# phonenumbers' types by our names; the kinds policy refuses are listed in ics.policy
KINDS = {
    T.FIXED_LINE: "fixed_line", T.MOBILE: "mobile",
    T.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",  # the NANP does not tell them apart
    T.VOIP: "voip", T.TOLL_FREE: "toll_free", T.PREMIUM_RATE: "premium",
    T.SHARED_COST: "shared_cost", T.PERSONAL_NUMBER: "personal", T.PAGER: "pager",
    T.UAN: "uan", T.VOICEMAIL: "voicemail",
}
SHORT_CODE, EMERGENCY = "short_code", "emergency"
INVALID = "invalid"  # never a Destination: parse raises NumberError (the call record says "invalid")


class NumberError(ValueError):
    """Text that is not a number anyone can be called at; the message is for a human."""


@dataclass(frozen=True)
class Destination:
    e164: str       # "+13125550100"; a short code has no E.164 form and keeps its digits ("911")
    kind: str       # a value of KINDS, SHORT_CODE or EMERGENCY
    region: str     # ISO 3166 country of the number ("US", "JM", "GB")
    country_code: int
    national: str   # national significant number ("3125550100")

    @property
    def domestic(self) -> bool:
        return self.region in DOMESTIC_REGIONS

    @property
    def short(self) -> bool:
        return self.kind in (SHORT_CODE, EMERGENCY)

    @property
    def dial(self) -> str:
        """The digits as dialled from the US: 10 digits inside the NANP (the lab's PJSIP
        endpoints are named so), 011 and the E.164 digits elsewhere; a short code as is."""
        if self.short or self.country_code == 1:
            return self.national
        return "011" + self.e164[1:]

    def __str__(self) -> str:
        return self.e164


def parse(text: str) -> Destination:
    """The Destination a typed or dialled string means, or NumberError saying what is wrong."""
    if not isinstance(text, str):
        raise NumberError(f"a number is text, got {type(text).__name__}")
    s = text.strip()
    if not s:
        raise NumberError("no number given")
    if len(s) > MAX_TEXT:
        raise NumberError(f"{len(s)} characters is too long for a phone number (at most 15 digits)")
    if len(s) <= MAX_SHORT_CODE and set(s) <= KEYPAD_CODES and set(s) & set("*#"):
        return Destination(s, SHORT_CODE, HOME_REGION, 1, s)
    bad = next((c for c in s if c not in TYPED), None)
    if bad is not None:
        raise NumberError(f"{s!r}: {bad!r} is not part of a phone number "
                          "(digits 0-9, spaces, ( ) - . and a leading + or 011)")
    if "+" in s[1:]:
        raise NumberError(f"{s!r}: + only starts an international number")
    digits = "".join(c for c in s if c.isdigit())
    if not digits:
        raise NumberError(f"{s!r} has no digits")
    if s[0] != "+" and len(digits) <= MAX_SHORT_CODE and not digits.startswith("011"):
        # 911, 411, 988: never a full number. Emergency numbers come from the plan's data.
        kind = EMERGENCY if shortnumberinfo.is_emergency_number(digits, HOME_REGION) else SHORT_CODE
        return Destination(digits, kind, HOME_REGION, 1, digits)
    try:
        n = phonenumbers.parse(s, HOME_REGION)
    except phonenumbers.NumberParseException as exc:
        raise NumberError(f"{s!r} is not a phone number: {PARSE_ERRORS.get(exc.error_type, 'unreadable')}") from None
    e164 = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(n):
        raise NumberError(f"{s!r} is not a number in use ({e164}: {_why_invalid(n)})")
    kind = KINDS.get(phonenumbers.number_type(n))
    if kind is None:  # valid but of no known type: treat as invalid rather than guess
        raise NumberError(f"{s!r} ({e164}) is of no known number type")
    return Destination(e164, kind, phonenumbers.region_code_for_number(n) or "", n.country_code,
                       phonenumbers.national_significant_number(n))


E = phonenumbers.NumberParseException
PARSE_ERRORS = {
    E.INVALID_COUNTRY_CODE: "no such country code after + or 011",
    E.NOT_A_NUMBER: "too few digits",
    E.TOO_SHORT_AFTER_IDD: "too few digits after + or 011",
    E.TOO_SHORT_NSN: "too few digits",
    E.TOO_LONG: "too many digits",
}


def _why_invalid(n: phonenumbers.PhoneNumber) -> str:
    R = phonenumbers.ValidationResult
    reason = phonenumbers.is_possible_number_with_reason(n)
    if reason == R.INVALID_COUNTRY_CODE:
        return f"there is no country code {n.country_code}"
    if reason == R.IS_POSSIBLE_LOCAL_ONLY:
        return "a local number without its area code: dial all 10 digits"
    if reason == R.TOO_SHORT:
        return "too few digits" + (" (a US number is the area code and 7 digits)" if n.country_code == 1 else "")
    if reason in (R.TOO_LONG, R.INVALID_LENGTH):
        return "the wrong number of digits"
    if n.country_code == 1:
        return "no such area code or exchange in the North American numbering plan"
    return f"not a valid number for country code {n.country_code}"


def e164(text: str) -> str:
    """The one stored spelling of a number (E.164); NumberError for anything else."""
    d = parse(text)
    if d.short:
        raise NumberError(f"{d.e164} is a short code, not a phone number")
    return d.e164
