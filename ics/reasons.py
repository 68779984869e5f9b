"""Reason codes: why a call ended or never connected. The one list.

Every call record carries exactly one `reason`; the text is what ops and
families are told. Codes are stable identifiers: add new ones, never rename.
"""

REASONS: dict[str, str] = {
    # refused before the called party's phone rings
    "pin_invalid": "Three wrong inmate number / PIN entries in one call",
    "pin_locked": "The inmate's PIN is locked after repeated failures; staff must unlock it",
    "invalid_number": "The dialed number is not a number in use in the numbering plan (a US number is "
                      "10 digits, an international one 011 and the number)",
    "not_approved": "The number is not on the inmate's approved list",
    "approval_pending": "The number is on the inmate's list but staff have not approved it yet",
    "toll_free_not_allowed": "Toll-free numbers (800, 833, 844, ... and abroad) cannot be called",
    "premium_not_allowed": "Premium-rate numbers (900 and abroad) cannot be called",
    "short_code_not_allowed": "Short codes (411, 611, 988, star codes, ...) cannot be dialed from an inmate phone",
    "emergency_not_allowed": "Emergency numbers (911, 112) are not placed from an inmate phone; the inmate "
                             "is told to alert staff (or where the facility routes them)",
    "number_type_not_allowed": "Shared-cost and forwarding numbers (personal, pager, UAN, voicemail) "
                               "cannot be called",
    "inmate_suspended": "The inmate's calling privileges are suspended",
    "quota_exhausted": "The inmate's weekly quota of calls or minutes is used up",
    "outside_schedule": "The living unit's calling schedule does not allow calls at this time",
    "lockdown": "The facility or living unit is in lockdown: no new calls",
    "blocked_inmate": "The called party blocked calls from this inmate",
    "blocked_facility": "The number is blocked for the whole facility",
    # no longer produced: a number without an account is needs_prepaid (kept for old records)
    "no_account": "No account pays for calls to this number",
    "needs_prepaid": "The number cannot be billed (no account; a wireless or VoIP line, a collect block "
                     "or a new-number restriction without a prepaid account); the called party must "
                     "open a prepaid account",
    "direct_bill_limit": "The direct-bill account reached its monthly spending limit",
    "international_not_allowed": "The facility does not allow calls to that country (its international list)",
    "insufficient_funds": "The account cannot pay for the first minute",
    "account_expired": "The prepaid account expired after 180 days without use; a deposit reactivates it",
    "system_unavailable": "The call monitor (AMI listener) was down, so nothing could enforce the call's "
                          "rules: the call was not placed, nothing held or billed",
    "capacity_full": "Every line of the system was busy (capacity.max_calls calls live): the call was "
                     "refused before it was placed, nothing billed",
    "inmate_abandoned": "The inmate hung up before the call was placed",
    # the outside phone rang
    "no_answer": "The called party did not answer",
    "busy": "The called party was busy or unreachable",
    "refused": "The called party pressed the refuse key",
    "blocked_by_called": "The called party pressed the block key; future calls are blocked",
    "no_response": "No valid key after the announcement and one reprompt",
    "called_hangup_before_accept": "The called party hung up during the announcement",
    "inmate_hangup_before_accept": "The inmate hung up while the called party heard the announcement",
    # after the bridge
    "inmate_hangup": "The inmate hung up",
    "called_hangup": "The called party hung up",
    "time_limit": "The facility time limit or the prepaid balance ran out",
    # ended by the AMI listener's rules (ami/rules.py); the record names the rule,
    # its threshold and the AMI events that triggered it
    "hold": "A party put the call on hold (or answered call waiting) longer than the facility allows",
    "hook_flash": "A hook flash (three-way calling attempt) on either phone",
    "transfer": "A party tried to transfer the call",
    "conference": "A third party was added to the call (conference or a new linked channel)",
    "silence": "No one spoke on the call for longer than the facility allows",
    "extra_digits": "The called party pressed more keypad digits than the facility allows during the call",
    # the called leg's audio (ami/tones.py): a three-way call made inside the carrier's switch
    "dial_tone": "A dial tone was heard on the called line (the called party flashed to make a three-way call)",
    "ringback": "A ringback tone was heard on the called line (a third party's phone was ringing)",
    "busy": "A busy or reorder tone was heard on the called line",
    "sit": "Special information tones (a carrier's intercept) were heard on the called line",
    "inband_digits": "More keypad tones than the facility allows were heard on the called line",
    "dead_air": "The called line dropped abruptly to dead air (as a hook flash does)",
    "flash_sequence": "Dead air followed by a tone or keypad digits on the called line (a three-way call)",
    "lockdown_ended": "A lockdown ended the call while it was in progress",
    "cut_off": "An investigator cut the call off",
    # faults
    "system_error": "A fault in the calling system ended the call",
}


def describe(code: str) -> str:
    return REASONS.get(code, f"unknown reason {code!r}")
