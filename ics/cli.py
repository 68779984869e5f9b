"""icsctl: the operators' console for facilities, inmates, numbers, blocks, accounts and calls.

Results go to stdout (`--json` on every read command: one JSON document, money
in integer `*_cents`); every change also logs one `ops.<verb>` event to stderr
(ics.logs). Bad input, a missing thing, bad configuration or an unreachable
Redis is one line on stderr and exit status 1; a malformed command line is
exit status 2. Configuration comes from ics.config.load() (ICS_REDIS_URL, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import redis

from . import (audio, capacity, config, destination, ledger, livecalls, logs, policy, prompts, rating,
               reasons, recordings, records, settlement, statements)
from .amiclient import AmiError
from .config import ConfigError
from .store import (ACCOUNT_TYPES, INACTIVITY_MS, INMATE_STATUSES, LINE_TYPES, Store, StoreError, connect, dollars,
                    now_ms)

PROG = "icsctl"
MAX_CALLS_LIMIT = 10_000
NAME_MAX_S = 10  # longest imported name recording (ics.audio.import_file truncates)
SETTINGS = tuple(config.DEFAULTS["facility_defaults"])
DIGIT_SETTINGS = (*config.FACILITY_DIGIT_KEYS, "lang_switch_digit")
ZERO_OK = ("adp", "facility_cost_cents", "notice_interval_s", "rate_local_cents", "rate_instate_cents",
           "rate_interstate_cents", "tax_bps", "hold_grace_s", "tty_rate_cents")  # 0 is meaningful
SETTING_HELP = {
    "type": "prison or jail (sets the FCC cap); ",
    "adp": "average daily population (a jail's FCC cap); ",
    "facility_cost_cents": "FCC facility-cost additive, 0-2 cents/min; ",
    "rate_cents_per_min": "cents/min for classes without their own rate; ",
    "rate_local_cents": "cents/min, 0 = rate-cents-per-min; ",
    "rate_instate_cents": "cents/min, 0 = rate-cents-per-min; ",
    "rate_interstate_cents": "cents/min, 0 = rate-cents-per-min; ",
    "international": 'countries allowed, "GB:12:1200, JM:15:4000" (country:cents/min:termination '
                     'millicents/min; rate at most the FCC cap plus termination), empty = none; ',
    "emergency_routed": "911 is routed elsewhere by the facility (the refusal prompt says so); ",
    "tax_bps": "taxes passed through, basis points (100 = 1%%); ",
    "warn_before_s": "notices before the time limit, seconds, comma-separated; ",
    "hold_grace_s": "a hold undone within this is forgiven, 0 = none; ",
    "before_accept": "a hook flash, hold or transfer before the bridge: end (the call) or record (only); ",
    "responses": 'what each rule does, "hold=warn, dead_air=off" (disconnect, warn, flag, off; '
                 'README "Three-way calls"); ',
    "tone_plan": "the carrier's call-progress tones: na or eu (425 Hz); ",
    "local_npas": "comma-separated local area codes; ",
    "state_npas": "comma-separated in-state area codes; ",
    "timezone": "IANA time zone of schedules and dates; ",
    "schedule": 'calling hours, e.g. "mon-fri 08:00-21:00; sun 09:00-17:00"; ',
    "approved_max": "numbers per inmate (pending + approved); ",
    "notice_interval_s": "in-call facility notice to the called party every N s, 0 = off; ",
    "caller_id": "outbound caller ID number (a US number), empty = withheld; ",
    "language": "what inmates and called parties hear unless their own is set (a language of the manifest); ",
    "lang_switch_digit": "the key a called party presses to hear another language (not a menu key); ",
    "relay_numbers": "relay destinations (711, TRS numbers), comma-separated: always allowed, never billed, "
                     "audio rules off; ",
    "relay_recorded": "relay calls are recorded; ",
    "tty_rate_cents": "cents/min at most for a call to a number marked tty, 0 = free; ",
    "free_lines_anytime": "numbers marked free are reachable outside schedules and weekly quotas; ",
}

log = logs.get("icsctl")


class CliError(Exception):
    """Bad input or a missing thing, found by icsctl: the message is for a human."""


class UsageError(Exception):
    """A malformed command line (exit status 2)."""


# --- formatting ----------------------------------------------------------------



def iso(ms: int | None) -> str | None:
    if ms is None or ms == "":
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc(ms: int | None) -> str:
    if ms is None or ms == "":
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def out(text: str = "") -> None:
    print(text, file=sys.stdout)


def emit_json(doc: Any) -> None:
    out(json.dumps(doc, indent=2, ensure_ascii=False))


def table(headers: list[str], rows: list[list[Any]], empty: str) -> None:
    if not rows:
        out(empty)
        return
    cells = [[str(c) for c in headers]] + [["-" if c is None or c == "" else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def fields(pairs: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        out(f"{k.ljust(width)}  {'-' if v is None or v == '' else v}")


def redacted(url: str) -> str:
    """A Redis URL without its password, for error messages."""
    return re.sub(r"//[^@/]*@", "//***@", url)


# --- input checks ----------------------------------------------------------------

def positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text or "") or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return int(text)


def on_off(text: str) -> bool:
    word = (text or "").strip().lower()
    if word in ("on", "yes", "true", "1"):
        return True
    if word in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"must be on or off, got {text!r}")


def non_negative_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text or ""):
        raise argparse.ArgumentTypeError(f"must be a whole number (0 or more), got {text!r}")
    return int(text)


def one_line(what: str, text: str) -> str:
    if not text or not text.strip() or any(c in text for c in "\r\n\0"):
        raise CliError(f"{what} must be non-empty, one line")
    return text


def cents_from_args(cents: str | None, amount: str | None) -> int:
    """--cents N (whole cents) or --amount D.DD (dollars, exact): a positive whole number of cents."""
    if cents is not None:
        if re.fullmatch(r"\s*-.*", cents):
            raise CliError(f"amount must be positive, got --cents {cents}")
        if not re.fullmatch(r"[0-9]+", cents):
            raise CliError(f"--cents must be a whole number of cents, got {cents!r}")
        value = int(cents)
    else:
        text = amount.strip().removeprefix("$")
        if text.startswith("-"):
            raise CliError(f"amount must be positive, got --amount {amount}")
        if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text):
            raise CliError(f"--amount must be dollars such as 12.34, got {amount!r}")
        exact = Decimal(text) * 100
        if exact != exact.to_integral_value():
            raise CliError(f"--amount {amount} has a fraction of a cent")
        value = int(exact)
    if value <= 0:
        raise CliError("amount must be more than zero")
    return value


# --- lookups that fail with "no such ..." ------------------------------------------

def need_facility(store: Store, fid: str) -> dict:
    fac = store.facility(fid) if fid in store.facilities() else None
    if fac is None:
        raise CliError(f"no such facility {fid}")
    return fac


def need_inmate(store: Store, iid: str) -> dict:
    inmate = store.inmate(iid)
    if inmate is None:
        raise CliError(f"no such inmate {iid}")
    return inmate


def need_account(store: Store, aid: str):
    acct = store.account(aid)
    if acct is None:
        raise CliError(f"no such account {aid}")
    return acct


def need_number(text: str) -> str:
    """A number as typed ("(312) 555-0100", "+44 20 7946 0000") in its one stored spelling, E.164."""
    try:
        return destination.e164(text)
    except destination.NumberError as exc:
        raise CliError(f"invalid number: {exc}") from None


# --- facilities --------------------------------------------------------------------

def facility_sound_path(cfg: config.Config, fid: str) -> Path:
    return cfg.sounds_dir / "facilities" / f"{fid}.wav"


def facility_create(store: Store, a) -> int:
    fid, name = a.fid, a.name
    overrides = {k: getattr(a, k) for k in SETTINGS if getattr(a, k) is not None}
    store.check_facility(fid, name, **overrides)  # everything is checked before the name is rendered
    wav = facility_sound_path(store.cfg, fid)
    if not a.no_audio:
        try:
            audio.speak(name, wav)
        except audio.AudioError as exc:
            raise CliError(f"cannot render the facility's spoken name ({exc}); nothing was created "
                           "(--no-audio creates the facility without it)") from None
    try:
        store.create_facility(fid, name, **overrides)
    except Exception:
        if not a.no_audio:
            wav.unlink(missing_ok=True)
        raise
    log.info("ops.facility_create", facility=fid, name=name, settings=overrides,
             audio=None if a.no_audio else str(wav))
    out(f"created facility {fid} ({name})")
    if a.no_audio:
        out(f"spoken name NOT rendered (--no-audio): announcements leave out the facility name "
            f"until {wav} exists")
    else:
        out(f"spoken name: {wav}")
    return 0


def facility_doc(store: Store, fid: str) -> dict:
    fac = need_facility(store, fid)
    overrides = store.facility_overrides(fid)
    wav = facility_sound_path(store.cfg, fid)
    return {
        "id": fid,
        "name": fac["name"],
        **{k: fac[k] for k in SETTINGS},
        "overridden": sorted(k for k in overrides if k in SETTINGS),
        "name_audio": str(wav) if wav.is_file() else None,
    }


def facility_list(store: Store, a) -> int:
    docs = []
    for fid in store.facilities():
        try:
            docs.append(facility_doc(store, fid))
        except ConfigError as exc:  # one bad facility must not hide the others
            docs.append({"id": fid, "error": str(exc)})
    if a.json:
        emit_json({"facilities": docs})
        return 0
    rows = [[d["id"], d.get("name") or f"INVALID: {d['error']}",
             f"{dollars(d['rate_cents_per_min'])}/min" if "error" not in d else "",
             f"{d['time_limit_s']} s" if "error" not in d else "",
             yes_no(d["name_audio"] is not None) if "error" not in d else ""]
            for d in docs]
    table(["FACILITY", "NAME", "RATE", "TIME LIMIT", "SPOKEN NAME"], rows, "no facilities")
    return 0


def class_rate_text(doc: dict, cls: str) -> str:
    if cls == "international":
        countries = rating.parse_international(doc["international"]).values()
        return ", ".join(f"{c.region} {dollars(c.rate_cents)}/min (termination {c.termination_millicents} "
                         f"millicents/min)" for c in countries) or "not allowed"
    cents = rating.class_rate(doc, cls)
    own = doc[f"rate_{cls}_cents"] > 0
    return f"{dollars(cents)}/min  ({'own rate' if own else 'rate-cents-per-min'})"


def rule_text(doc: dict, key: str, detail: str, src) -> str:
    return (f"on, {detail}" if doc[key] else "off") + f"  ({src(key)})"


def facility_show(store: Store, a) -> int:
    doc = facility_doc(store, a.fid)
    if a.json:
        emit_json(doc)
        return 0
    def src(k):
        return "facility" if k in doc["overridden"] else "default"
    pairs: list[tuple[str, Any]] = [("facility", doc["id"]), ("name", doc["name"]),
             ("spoken name", doc["name_audio"] or "missing: announcements leave out the facility name")]
    for k in DIGIT_SETTINGS:
        pairs.append((k.replace("_", " "), f"{doc[k]}  ({src(k)})"))
    pairs += [
        ("menu timeout", f"{doc['menu_timeout_s']} s  ({src('menu_timeout_s')})"),
        ("time limit", f"{doc['time_limit_s']} s  ({src('time_limit_s')})"),
        ("rate", f"{dollars(doc['rate_cents_per_min'])}/min  ({src('rate_cents_per_min')})"),
        ("facility type", f"{doc['type']}, ADP {doc['adp']}  ({src('type')}, {src('adp')})"),
        ("FCC cap", f"{dollars(rating.fcc_cap(doc['type'], doc['adp'])[0] + doc['facility_cost_cents'])}/min "
                    f"(facility cost {doc['facility_cost_cents']} c/min)"),
        *[(f"rate {cls}", class_rate_text(doc, cls)) for cls in rating.CLASSES],
        ("taxes", f"{doc['tax_bps'] / 100:g} %  ({src('tax_bps')})"),
        ("local area codes", doc["local_npas"] or "none"),
        ("in-state area codes", doc["state_npas"] or "none"),
        ("time zone", f"{doc['timezone']}  ({src('timezone')})"),
        ("schedule", f"{doc['schedule'] or 'any time'}  ({src('schedule')}; a unit's own replaces it)"),
        ("approved max", f"{doc['approved_max']}  ({src('approved_max')})"),
        ("in-call notice", (f"every {doc['notice_interval_s']} s" if doc["notice_interval_s"] else "off")
                           + f"  ({src('notice_interval_s')})"),
        ("caller ID", f"{doc['caller_id'] or 'withheld'}  ({src('caller_id')})"),
        ("emergency numbers", ("refused, prompt: the facility routes them elsewhere" if doc["emergency_routed"]
                               else "refused, prompt: tell an officer") + f"  ({src('emergency_routed')})"),
        ("PIN tries per call", f"{doc['pin_max_tries']}  ({src('pin_max_tries')})"),
        ("PIN locks after", f"{doc['pin_lock_after']} failures  ({src('pin_lock_after')})"),
        ("rule hold", rule_text(doc, "rule_hold", f"after {doc['hold_grace_s']} s grace", src)),
        ("rule hook flash", rule_text(doc, "rule_hook_flash", "at once", src)),
        ("rule transfer", rule_text(doc, "rule_transfer", "transfers, conferences, third parties", src)),
        ("rule silence", rule_text(doc, "rule_silence", f"after {doc['silence_s']} s", src)),
        ("rule extra digits", rule_text(doc, "rule_extra_digits",
                                        f"more than {doc['digits_max']} in {doc['digits_window_s']} s", src)),
        ("time-limit notices", f"{doc['warn_before_s']} s before  ({src('warn_before_s')})"),
        ("before accept", ("flash, hold, transfer end the call" if doc["before_accept"] == "end"
                           else "flash, hold, transfer only recorded") + f"  ({src('before_accept')})"),
    ]
    fields(pairs)
    return 0


# --- inmates -----------------------------------------------------------------------

def inmate_create(store: Store, a) -> int:
    name = a.name
    replaced = store.create_inmate(a.iid, a.facility, name, a.pin, replace=a.replace)  # refuses an existing id
    log.info("ops.inmate_create", inmate=a.iid, facility=a.facility, name=name, replaced=replaced)
    out(f"{'replaced' if replaced else 'created'} inmate {a.iid} ({name}) at facility {a.facility}")
    out(f"name not recorded yet: the inmate records it on the first call, "
        f"or: {PROG} inmate import-name {a.iid} FILE.wav")
    return 0


def inmate_show(store: Store, a) -> int:
    inmate = need_inmate(store, a.iid)
    wav = store.cfg.sounds_dir / "names" / f"{a.iid}.wav"
    doc = {  # listed field by field: the PIN hash and salt never leave the store
        "id": a.iid,
        "name": inmate.get("name"),
        "facility": inmate.get("facility"),
        "pin_locked": inmate.get("pin_locked") == "1",
        "pin_failures": store.pin_failure_count(a.iid),
        "name_recorded": inmate.get("name_recorded") == "1",
        "name_audio": str(wav) if prompts.exists(store.cfg.sounds_dir, prompts.name_sound(a.iid)) else None,
        "unit": inmate.get("unit") or None,
        "status": inmate.get("status") or "active",
        "quota_calls_week": int(inmate.get("quota_calls_week") or 0),
        "quota_minutes_week": int(inmate.get("quota_minutes_week") or 0),
        "approved_numbers": store.approved_numbers(a.iid),
        "blocked_numbers": store.blocked_numbers(inmate=a.iid),
    }
    if a.json:
        emit_json(doc)
        return 0
    fields([
        ("inmate", doc["id"]), ("name", doc["name"]), ("facility", doc["facility"]),
        ("living unit", doc["unit"] or "none (the facility's schedule applies)"),
        ("status", doc["status"] + (f" ({doc['quota_calls_week'] or 'any'} calls, "
                                    f"{doc['quota_minutes_week'] or 'any'} minutes a week)"
                                    if doc["status"] == "restricted" else "")),
        ("PIN locked", "YES: " + f"{PROG} inmate unlock {a.iid}" if doc["pin_locked"] else "no"),
        ("wrong PINs in a row", doc["pin_failures"]),
        ("name recorded", yes_no(doc["name_recorded"])),
        ("name audio", doc["name_audio"] or "missing: announcements use a generic phrase"),
        ("approved numbers", ", ".join(doc["approved_numbers"]) or "none"),
        ("blocked numbers", ", ".join(doc["blocked_numbers"]) or "none"),
    ])
    return 0


def inmate_unlock(store: Store, a) -> int:
    inmate = need_inmate(store, a.iid)
    failures = store.pin_failure_count(a.iid)
    store.unlock_pin(a.iid)
    log.info("ops.inmate_unlock", inmate=a.iid, was_locked=inmate.get("pin_locked") == "1", failures=failures)
    state = "was locked" if inmate.get("pin_locked") == "1" else "was not locked"
    out(f"PIN unlocked for inmate {a.iid} ({state}; {failures} wrong PINs cleared)")
    return 0


def inmate_import_name(store: Store, a) -> int:
    need_inmate(store, a.iid)
    src = Path(a.file)
    if not src.is_file():
        raise CliError(f"no such file {a.file}")
    wav = store.cfg.sounds_dir / "names" / f"{a.iid}.wav"
    audio.import_file(src, wav, max_seconds=NAME_MAX_S)
    store.set_name_recorded(a.iid)
    length_ms = audio.duration_ms(wav)
    log.info("ops.inmate_import_name", inmate=a.iid, source=str(src), path=str(wav), length_ms=length_ms)
    note = f", cut to the first {NAME_MAX_S} s" if length_ms >= NAME_MAX_S * 1000 else ""
    out(f"imported the name of inmate {a.iid}: {wav} ({length_ms / 1000:.1f} s{note})")
    return 0


def inmate_approve(store: Store, a) -> int:
    need_inmate(store, a.iid)
    a.number = need_number(a.number)
    if store.is_approved(a.iid, a.number):
        out(f"{a.number} is already approved for inmate {a.iid}")
        return 0
    before = store.approve_number(a.iid, a.number)
    log.info("ops.inmate_approve", inmate=a.iid, number=a.number, was=before or None)
    out(f"approved {a.number} for inmate {a.iid}" + (f" (was {before})" if before else ""))
    if store.account_for_number(a.number) is None:
        out(f"note: no account pays for {a.number} yet ({PROG} account create ... --number {a.number})")
    return 0


def inmate_request(store: Store, a) -> int:
    """A number the inmate asked for: on the list, not callable until staff approve it."""
    need_inmate(store, a.iid)
    a.number = need_number(a.number)
    state = store.number_state(a.iid, a.number)
    if state in ("pending", "approved"):
        out(f"{a.number} is already {state} for inmate {a.iid}")
        return 0
    store.set_number_state(a.iid, a.number, "pending")
    log.info("ops.inmate_request", inmate=a.iid, number=a.number, was=state)
    out(f"{a.number} is pending staff approval for inmate {a.iid}")
    return 0


def inmate_reject(store: Store, a) -> int:
    need_inmate(store, a.iid)
    a.number = need_number(a.number)
    before = store.set_number_state(a.iid, a.number, "rejected")
    log.info("ops.inmate_reject", inmate=a.iid, number=a.number, was=before or None)
    out(f"rejected {a.number} for inmate {a.iid}" + (f" (was {before})" if before else ""))
    return 0


def inmate_unit(store: Store, a) -> int:
    need_inmate(store, a.iid)
    store.set_inmate_unit(a.iid, a.unit)
    log.info("ops.inmate_unit", inmate=a.iid, unit=a.unit)
    out(f"inmate {a.iid} now lives in unit {a.unit}")
    return 0


def inmate_language(store: Store, a) -> int:
    need_inmate(store, a.iid)
    store.set_inmate_language(a.iid, a.language)
    log.info("ops.inmate_language", inmate=a.iid, language=a.language)
    out(f"inmate {a.iid} hears {a.language or 'the facility language'}")
    return 0


def account_language(store: Store, a) -> int:
    store.set_account_language(a.aid, a.language)
    log.info("ops.account_language", account=a.aid, language=a.language)
    out(f"account {a.aid}'s numbers hear {a.language or 'the facility language'} (unless a number says otherwise)")
    return 0


def numbers_set(store: Store, a) -> int:
    """A number's language and flags: free, unrecorded (PREA lines, public defenders), tty."""
    a.number = need_number(a.number)
    info = store.set_number_info(a.number, language=a.language, note=a.note,
                                 free=a.free, unrecorded=a.unrecorded, tty=a.tty)
    log.info("ops.number_set", number=a.number, **info)
    store.audit("number_set", a.by, detail=f"number={a.number} " + " ".join(
        f"{k}={v}" for k, v in sorted(info.items()) if k != "note"))
    out(f"{a.number}: " + ", ".join(f"{k} {v}" for k, v in sorted(info.items())))
    return 0


def inmate_status(store: Store, a) -> int:
    need_inmate(store, a.iid)
    store.set_inmate_status(a.iid, a.status, a.calls_per_week or 0, a.minutes_per_week or 0)
    log.info("ops.inmate_status", inmate=a.iid, status=a.status, quota_calls_week=a.calls_per_week,
             quota_minutes_week=a.minutes_per_week)
    quota = [f"{n} {what}/week" for n, what in ((a.calls_per_week, "calls"), (a.minutes_per_week, "minutes"))
             if n]
    out(f"inmate {a.iid} is {a.status}" + (f" ({', '.join(quota)})" if quota else ""))
    return 0


def inmate_numbers(store: Store, a) -> int:
    inmate = need_inmate(store, a.iid)
    docs = []
    for number, state in store.number_states(a.iid).items():
        acct = store.account_for_number(number)
        docs.append({
            "number": number,
            "approval": state,
            "privileged": store.privileged(number) is not None,
            "blocked": store.block_reason(a.iid, inmate.get("facility", ""), number),
            "account": acct.id if acct else None,
            "available_cents": acct.available_cents if acct else None,
        })
    if a.json:
        emit_json({"inmate": a.iid, "numbers": docs})
        return 0
    rows = [[d["number"], d["approval"] + (" (privileged)" if d["privileged"] else ""),
             d["blocked"].replace("blocked_", "blocked by ") if d["blocked"]
             else "callable" if d["approval"] == "approved" else "not callable",
             d["account"] or "NO ACCOUNT",
             dollars(d["available_cents"]) if d["account"] else None] for d in docs]
    table(["NUMBER", "APPROVAL", "STATUS", "ACCOUNT", "AVAILABLE"], rows,
          f"inmate {a.iid} has no numbers on the list")
    return 0


# --- blocks ------------------------------------------------------------------------

def _block_target(store: Store, a) -> tuple[dict, str]:
    if a.inmate is not None:
        need_inmate(store, a.inmate)
        return {"inmate": a.inmate}, f"inmate {a.inmate}"
    need_facility(store, a.facility)
    return {"facility": a.facility}, f"facility {a.facility}"


def block_add(store: Store, a) -> int:
    target, label = _block_target(store, a)
    a.number = need_number(a.number)
    store.block(a.number, **target)
    log.info("ops.block_add", number=a.number, **target)
    out(f"blocked {a.number} for {label}")
    return 0


def block_remove(store: Store, a) -> int:
    target, label = _block_target(store, a)
    a.number = need_number(a.number)
    if not store.unblock(a.number, **target):
        raise CliError(f"{a.number} is not blocked for {label}")
    log.info("ops.block_remove", number=a.number, **target)
    out(f"unblocked {a.number} for {label}")
    return 0


def block_list(store: Store, a) -> int:
    target, label = _block_target(store, a)
    numbers = store.blocked_numbers(**target)
    if a.json:
        emit_json({**target, "numbers": numbers})
        return 0
    table(["BLOCKED NUMBER"], [[n] for n in numbers], f"no numbers blocked for {label}")
    return 0


# --- accounts ----------------------------------------------------------------------

def account_create(store: Store, a) -> int:
    # one spelling each, so a number typed twice in two ways is one number
    numbers = list(dict.fromkeys(need_number(n) for n in a.number or []))
    if a.type == "inmate_debit":
        if not a.inmate:
            raise CliError("an inmate_debit account needs --inmate IID (its id is debit-IID)")
        owner = one_line("account owner", a.owner) if a.owner else need_inmate(store, a.inmate).get("name", a.inmate)
    else:
        owner = a.owner or ""
        if not numbers:  # (the store takes a prepaid account without numbers; icsctl would leave it useless)
            raise CliError(f"a {a.type} account needs at least one --number")
    store.create_account(a.aid, owner, numbers, a.type, monthly_limit_cents=a.monthly_limit_cents,
                         inmate=a.inmate)
    log.info("ops.account_create", account=a.aid, type=a.type, owner=owner, numbers=numbers,
             monthly_limit_cents=a.monthly_limit_cents, inmate=a.inmate)
    if a.type == "prepaid":
        out(f"created prepaid account {a.aid} ({owner}) paying for {', '.join(numbers)}; balance $0.00")
        out(f"fund it: {PROG} account fund {a.aid} --amount 20.00")
    elif a.type == "direct_bill":
        out(f"created direct_bill account {a.aid} ({owner}) billing {', '.join(numbers)}; "
            f"monthly limit {dollars(a.monthly_limit_cents)}")
    else:
        out(f"created inmate_debit account {a.aid} for inmate {a.inmate}; balance $0.00")
        out(f"families fund it: {PROG} account fund {a.aid} --amount 20.00")
    return 0


def account_fund(store: Store, a) -> int:
    cents = cents_from_args(a.cents, a.amount)
    need_account(store, a.aid)
    note = one_line("note", a.note)
    balance = store.adjust(a.aid, "deposit", cents, note)
    acct = store.account(a.aid)
    log.info("ops.fund", account=a.aid, amount_cents=cents, balance_cents=balance, note=note)
    out(f"deposited {dollars(cents)} to account {a.aid}; balance {dollars(balance)}, "
        f"available {dollars(acct.available_cents)}")
    return 0


def account_show(store: Store, a) -> int:
    acct = need_account(store, a.aid)
    raw = store.account_fields(a.aid) or {}
    created = int(raw["created_ms"]) if raw.get("created_ms", "").isdigit() else None
    doc = {
        "id": acct.id, "type": acct.type, "owner": raw.get("owner", ""),
        "balance_cents": acct.balance_cents, "held_cents": acct.held_cents,
        "available_cents": acct.available_cents,
        "numbers": store.account_numbers(a.aid),
        "created_ms": created, "created_at": iso(created),
    }
    if acct.type == "direct_bill":  # available = monthly limit - this month's bills - held
        doc.update(monthly_limit_cents=acct.monthly_limit_cents, month_billed_cents=acct.month_billed_cents)
    if acct.type == "inmate_debit":
        doc["inmate"] = acct.inmate
    if a.json:
        emit_json(doc)
        return 0
    extra: list[tuple[str, Any]] = []
    if acct.type == "direct_bill":
        extra = [("monthly limit", dollars(acct.monthly_limit_cents)),
                 ("billed this month", f"{dollars(acct.month_billed_cents)}  (UTC month)")]
    elif acct.type == "inmate_debit":
        extra = [("inmate", acct.inmate)]
    fields([
        ("account", doc["id"]), ("type", doc["type"]), ("owner", doc["owner"]),
        ("balance", dollars(doc["balance_cents"]) + ("  (negative: owed)" if acct.type == "direct_bill"
                                                     and doc["balance_cents"] < 0 else "")),
        *extra,
        ("held", f"{dollars(doc['held_cents'])}" + ("  (calls in progress)" if doc["held_cents"] else "")),
        ("available", dollars(doc["available_cents"])),
        ("numbers", ", ".join(doc["numbers"]) or "none"),
        ("created", f"{utc(created)} UTC" if created else None),
    ])
    return 0


# --- LIDB (line information) ---------------------------------------------------------

def lidb_set(store: Store, a) -> int:
    a.number = need_number(a.number)
    store.set_lidb(a.number, a.line_type, a.collect_block, a.new_number)
    log.info("ops.lidb_set", number=a.number, line_type=a.line_type, collect_block=a.collect_block,
             new_number=a.new_number)
    problem = store.collect_problem(a.number)
    out(f"{a.number}: {a.line_type}, collect block {yes_no(a.collect_block)}, "
        f"new-number restriction {yes_no(a.new_number)}; "
        + (f"not billable collect or direct ({problem}): prepaid only" if problem else "billable collect or direct"))
    return 0


def lidb_show(store: Store, a) -> int:
    a.number = need_number(a.number)
    doc = store.lidb(a.number)
    problem = store.collect_problem(a.number)
    doc["collect_billable"] = problem is None
    if a.json:
        emit_json(doc)
        return 0
    fields([
        ("number", doc["number"]),
        ("line type", doc["line_type"] + ("" if doc["known"] else "  (not in the table: from its number type)")),
        ("collect block", yes_no(doc["collect_block"])),
        ("new-number restriction", yes_no(doc["new_number"])),
        ("collect / direct bill", "yes" if problem is None else f"no: {problem}; prepaid only"),
    ])
    return 0


SIGN = ledger.SIGN


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and re.fullmatch(r"-?[0-9]+", value) else None


def account_ledger(store: Store, a) -> int:
    need_account(store, a.aid)
    entries = []
    for e in store.ledger(a.aid):
        ts = _int(e.get("ts"))
        entry = {
            "id": e["id"], "kind": e.get("kind"),
            "amount_cents": _int(e.get("amount_cents")), "balance_cents": _int(e.get("balance_cents")),
            "ts_ms": ts, "time": iso(ts), "call": e.get("call") or None, "note": e.get("note") or None,
        }
        if "minutes" in e:
            entry["minutes"] = _int(e["minutes"])
        entries.append(entry)
    if a.json:
        emit_json({"account": a.aid, "entries": entries})
        return 0
    rows = []
    for e in entries:
        signed = SIGN.get(e["kind"], 1) * (e["amount_cents"] or 0)
        what = f"call {e['call']} ({e.get('minutes')} min)" if e["kind"] == "charge" else e["note"]
        rows.append([utc(e["ts_ms"]), e["kind"], ("+" if signed > 0 else "") + dollars(signed),
                     dollars(e["balance_cents"] or 0), what])
    table(["TIME (UTC)", "KIND", "AMOUNT", "BALANCE", "CALL / NOTE"], rows,
          f"no ledger entries for account {a.aid}")
    return 0


def account_refund(store: Store, a) -> int:
    need_account(store, a.aid)
    note = one_line("note", a.note)
    cents = None if a.all else cents_from_args(a.cents, a.amount)
    refunded, balance = store.refund(a.aid, cents, note)
    acct = store.account(a.aid)
    log.info("ops.refund", account=a.aid, amount_cents=refunded, balance_cents=balance, note=note)
    out(f"refunded {dollars(refunded)} from account {a.aid}; balance {dollars(balance)}, "
        f"available {dollars(acct.available_cents)}")
    return 0


# --- ledger check, expiry, statements ------------------------------------------------

def ledger_check(store: Store, a) -> int:
    doc = ledger.check(store.r)
    if a.json:
        emit_json(dict(doc, recordings_flagged=recordings.flagged_count(store.r),
                       recordings_flagged_latest=recordings.flagged(store.r, 5)))
    else:
        def cell(d, k):
            return dollars(d[k]) if d.get(k) is not None else None
        rows = [[d["account"], cell(d, "balance_cents"), cell(d, "ledger_cents"), cell(d, "held_cents"),
                 cell(d, "holds_cents"), "ok" if d["ok"] else "FAIL: " + "; ".join(d["problems"])]
                for d in doc["accounts"]]
        table(["ACCOUNT", "BALANCE", "LEDGER", "HELD", "CALL HOLDS", "STATUS"], rows, "no accounts")
    if not a.json:
        recording_line(store)
    if not doc["ok"]:
        return fail(f"ledger check failed for {len(doc['failed'])} account(s): {', '.join(doc['failed'])}")
    if not a.json:
        out(f"ledger check passed: {len(doc['accounts'])} account(s) balance")
    return 0


def recording_line(store: Store) -> None:
    """Evidence beside the money: how many calls' recordings came out short or missing."""
    n = recordings.flagged_count(store.r)
    if n:
        out(f"RECORDINGS: {n} call(s) with a short or missing recording (audio lost), latest: "
            f"{', '.join(recordings.flagged(store.r, 5))} ({PROG} calls show CALL)")
    else:
        out("recordings: none short or missing")


def status(store: Store, a) -> int:
    """Is the platform taking calls: the AMI listener's heartbeat, live calls against
    capacity.max_calls (admission control, ics.capacity). Exit 1 while new calls are refused."""
    st = capacity.status(store.r, store.cfg["node"]["id"])
    max_calls = store.cfg["capacity"]["max_calls"]
    busy = st["live_calls"] is not None and st["live_calls"] + st["setting_up"] >= max_calls
    if a.json:
        emit_json(dict(st, max_calls=max_calls, full=busy))
    else:
        out(f"listener: up, heartbeat {st['heartbeat_age_ms']} ms ago" if st["listener_alive"] else
            "listener: DOWN (no heartbeat): new calls are refused (system_unavailable)")
        live = "?" if st["live_calls"] is None else st["live_calls"]
        out(f"calls: {live} live / {max_calls} max_calls, {st['setting_up']} being placed"
            + ("; FULL: new calls hear the busy prompt (capacity_full)" if busy else ""))
    if not st["listener_alive"]:
        return fail("the AMI listener is down: new calls are refused")
    return 0


EXPIRE_STATES = ("flagged", "expired", "active", "in_call", "not_expiring")


def accounts_expire(store: Store, a) -> int:
    now = now_ms() if a.now_ms is None else a.now_ms
    groups = store.expire_accounts(now)
    flagged = groups.get("flagged", [])
    for g in flagged:
        log.info("ops.account_expired", account=g["account"], last_activity_ms=g["last_activity_ms"], now_ms=now)
    if a.json:
        emit_json({"now_ms": now, "inactivity_days": INACTIVITY_MS // 86_400_000,
                   **{k: groups.get(k, []) for k in EXPIRE_STATES}})
        return 0
    rows = [[g["account"], "newly expired" if state == "flagged" else "expired", utc(g["last_activity_ms"])]
            for state in ("flagged", "expired") for g in groups.get(state, [])]
    table(["ACCOUNT", "STATE", "LAST ACTIVITY (UTC)"], rows, "no account is expired")
    out(f"{len(flagged)} newly expired, {len(groups.get('expired', []))} already expired, "
        f"{len(groups.get('active', [])) + len(groups.get('in_call', []))} active "
        f"(expiry after {INACTIVITY_MS // 86_400_000} idle days; refunds due: {PROG} accounts refunds-due)")
    return 0


def accounts_refunds_due(store: Store, a) -> int:
    due = store.refunds_due()
    total = sum(d["refund_due_cents"] for d in due)
    if a.json:
        emit_json({"refunds_due": [dict(d, expired_at=iso(d["expired_ms"]),
                                        last_activity_at=iso(d["last_activity_ms"])) for d in due],
                   "total_cents": total})
        return 0
    rows = [[d["account"], d["owner"], dollars(d["refund_due_cents"]), utc(d["expired_ms"]),
             utc(d["last_activity_ms"])] for d in due]
    table(["ACCOUNT", "OWNER", "REFUND DUE", "EXPIRED (UTC)", "LAST ACTIVITY (UTC)"], rows, "no refunds due")
    if due:
        out(f"total {dollars(total)}; pay one out with: {PROG} account refund AID --all")
    return 0


def statement(store: Store, a) -> int:
    need_account(store, a.aid)
    try:
        st = statements.build(store, a.aid, a.month)
    except statements.StatementError as exc:
        raise CliError(str(exc)) from None
    path = a.csv or a.html
    (statements.write_csv if a.csv else statements.write_html)(st, path)
    log.info("ops.statement", account=a.aid, month=a.month, path=path, calls=len(st.calls))
    out(f"wrote the {a.month} statement of account {a.aid} to {path}: {len(st.calls)} call(s), "
        f"opening {dollars(st.opening_cents)}, closing {dollars(st.closing_cents)}")
    return 0


# --- calls -------------------------------------------------------------------------

TIME_FIELDS = ("started_ms", "answered_ms", "bridged_ms", "ended_ms", "cut_ms")


def call_doc(rec: dict) -> dict:
    doc = {k: rec[k] for k in records.FIELDS if k in rec}
    doc.update({k: v for k, v in rec.items() if k not in doc})
    doc["settled"] = rec.get("settled") == "1"
    for k in TIME_FIELDS:
        if isinstance(rec.get(k), int):
            doc[k.removesuffix("_ms") + "_at"] = iso(rec[k])
    if rec.get("reason"):
        doc["reason_description"] = reasons.describe(rec["reason"])
    for k in ("evidence", "fired", "responses"):
        if rec.get(k):
            try:
                doc[k] = json.loads(rec[k])
            except ValueError:  # shown as stored rather than hidden
                doc[k] = rec[k]
    if isinstance(rec.get("bridged_ms"), int) and isinstance(rec.get("ended_ms"), int):
        doc["bridged_duration_ms"] = max(0, rec["ended_ms"] - rec["bridged_ms"])
    return doc


def calls_list(store: Store, a) -> int:
    if a.limit > MAX_CALLS_LIMIT:
        raise CliError(f"--limit is at most {MAX_CALLS_LIMIT}")
    docs = [call_doc(rec) for rec in records.recent(store.r, a.limit)]
    if a.json:
        emit_json({"calls": docs})
        return 0
    rows = [[d["call_id"], utc(d.get("started_ms")), d.get("inmate"), d.get("number"),
             d.get("reason") or f"({d.get('outcome') or 'in progress'})",
             d.get("billed_minutes"),
             dollars(d["billed_cents"]) if isinstance(d.get("billed_cents"), int) else None]
            for d in docs]
    table(["CALL ID", "START (UTC)", "INMATE", "NUMBER", "REASON", "MIN", "BILLED"], rows, "no calls recorded")
    return 0


def calls_settle(store: Store, a) -> int:
    rec = records.get(store.r, a.call_id)
    if rec is None:
        raise CliError(f"no such call {a.call_id}")
    money = store.call_money(rec.get("account", ""), a.call_id)
    if not rec.get("ended_ms") and money.get("settled") != 1:
        raise CliError(f"call {a.call_id} has not ended: it is settled when it hangs up")
    rec = settlement.settle(store, a.call_id)
    log.info("ops.calls_settle", call_id=a.call_id, billed_cents=rec.get("billed_cents"))
    out(f"call {a.call_id} settled: {dollars(rec.get('billed_cents') or 0)}, "
        f"{rec.get('billed_minutes') or 0} min, reason {rec.get('reason')}")
    return 0


def calls_show(store: Store, a) -> int:
    rec = records.get(store.r, a.call_id)
    if rec is None:
        raise CliError(f"no such call {a.call_id}")
    doc = call_doc(rec)
    if rec.get("recording"):
        path = store.cfg.recordings_dir / rec["recording"]
        doc["recording_path"] = str(path)
        wav = recordings.measure(path)  # from its bytes: pydub trusts a header Asterisk writes last
        doc["recording_file_ms"] = wav.ms if wav else None
        doc["recording_file_final"] = bool(wav and wav.final)
    said = recordings.describe(rec)
    if said:
        doc["recording_verdict"] = said
    if a.json:
        emit_json(doc)
        return 0
    pairs: list[tuple[str, Any]] = []
    for k, v in doc.items():
        if k.endswith("_at") or k in ("reason_description", "bridged_duration_ms", "evidence", "fired",
                                      "recording_file_ms",
                                      "recording_file_final", "recording_verdict", "recording_check",
                                      "recording_ms", "recording_short_ms", "bridged_for_ms"):
            continue
        if k in TIME_FIELDS and isinstance(v, int):
            k, v = k.removesuffix("_ms"), iso(v)
        elif k in ("held_cents", "billed_cents") and isinstance(v, int):
            k, v = k.removesuffix("_cents"), dollars(v)
        elif k == "rate_cents" and isinstance(v, int):
            k, v = "rate", f"{dollars(v)}/min"
        elif k == "limit_s" and isinstance(v, int):
            k, v = "limit", f"{v} s"
        elif k == "settled":
            v = yes_no(v)
        elif k == "reason" and v:
            v = f"{v}: {doc['reason_description']}"
        pairs.append((k, v))
    if "bridged_duration_ms" in doc:
        pairs.append(("bridged for", f"{doc['bridged_duration_ms'] / 1000:.1f} s"))
    if doc.get("recording_path"):
        length = doc.get("recording_file_ms")
        pairs.append(("recording file", doc["recording_path"] + (
            " (missing)" if length is None else f" ({length / 1000:.1f} s)" if doc["recording_file_final"]
            else f" ({length / 1000:.1f} s so far: still being written)")))
    if doc.get("recording_verdict"):
        pairs.append(("recording check", doc["recording_verdict"]))
    fields(pairs)
    if "evidence" in doc:
        out("evidence (AMI events that triggered the rule):")
        for ev in doc["evidence"] if isinstance(doc["evidence"], list) else [doc["evidence"]]:
            out("  " + evidence_line(ev))
    if isinstance(doc.get("fired"), list) and doc["fired"]:
        out("rules that fired (and what was done):")
        for f in doc["fired"]:
            out(f"  {iso(f.get('at_ms', 0))}  {f.get('rule')} -> {f.get('response')}  ({f.get('threshold')})")
            for ev in f.get("evidence", []):
                out("    " + evidence_line(ev))
    return 0


def evidence_line(ev: Any) -> str:
    if not isinstance(ev, dict):
        return str(ev)
    when = ev.get("time", "")
    try:
        when = datetime.fromtimestamp(float(when), timezone.utc).isoformat(timespec="milliseconds")
    except ValueError:
        pass
    extra = ", ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "time", "channel"))
    return f"{when}  {ev.get('event', '?')}  {ev.get('channel', '')}" + (f"  ({extra})" if extra else "")


# --- living units and lockdowns -------------------------------------------------------

def unit_create(store: Store, a) -> int:
    need_facility(store, a.fid)
    store.create_unit(a.fid, a.uid, a.name, a.schedule or "")  # refuses an existing unit
    log.info("ops.unit_create", facility=a.fid, unit=a.uid, schedule=a.schedule or "")
    out(f"created unit {a.uid} at facility {a.fid}; schedule: {a.schedule or 'the facility schedule'}")
    return 0


def unit_schedule(store: Store, a) -> int:
    need_facility(store, a.fid)
    store.set_unit_schedule(a.fid, a.uid, a.schedule)
    log.info("ops.unit_schedule", facility=a.fid, unit=a.uid, schedule=a.schedule)
    out(f"unit {a.uid} schedule: {a.schedule or 'the facility schedule'}")
    return 0


def unit_list(store: Store, a) -> int:
    fac = need_facility(store, a.fid)
    docs = []
    for uid in store.units(a.fid):
        u = store.unit(a.fid, uid) or {}
        docs.append({"id": uid, "name": u.get("name"), "schedule": u.get("schedule") or None,
                     "lockdown": store.in_lockdown(a.fid, uid)})
    if a.json:
        emit_json({"facility": a.fid, "timezone": fac["timezone"], "schedule": fac["schedule"] or None,
                   "units": docs})
        return 0
    table(["UNIT", "NAME", "SCHEDULE", "LOCKDOWN"],
          [[d["id"], d["name"], d["schedule"] or f"(facility) {fac['schedule'] or 'any time'}",
            yes_no(d["lockdown"])] for d in docs], f"facility {a.fid} has no units")
    return 0


def lockdown_on(store: Store, a) -> int:
    need_facility(store, a.facility)
    by = one_line("--by", a.by)
    store.set_lockdown(a.facility, a.unit, by, a.note or "", a.end_live)
    scope = f"unit {a.unit} of facility {a.facility}" if a.unit else f"facility {a.facility}"
    store.audit("lockdown_on", by, "", f"{scope}; end live calls: {yes_no(a.end_live)}; {a.note or ''}")
    log.info("ops.lockdown_on", facility=a.facility, unit=a.unit, by=by, end_live=a.end_live)
    out(f"lockdown on for {scope}: new calls are refused")
    if a.end_live:
        ended = livecalls.end_for_lockdown(store, a.facility, a.unit, by)
        out(f"live calls ended: {len(ended)}" + (f" ({', '.join(ended)})" if ended else ""))
    return 0


def lockdown_off(store: Store, a) -> int:
    need_facility(store, a.facility)
    by = one_line("--by", a.by)
    scope = f"unit {a.unit} of facility {a.facility}" if a.unit else f"facility {a.facility}"
    if not store.clear_lockdown(a.facility, a.unit):
        raise CliError(f"{scope} is not in lockdown")
    store.audit("lockdown_off", by, "", scope)
    log.info("ops.lockdown_off", facility=a.facility, unit=a.unit, by=by)
    out(f"lockdown lifted for {scope}")
    return 0


# --- numbers ---------------------------------------------------------------------------

def numbers_check(store: Store, a) -> int:
    try:
        d = destination.parse(a.number)
    except destination.NumberError as exc:
        raise CliError(f"invalid number: {exc}") from None
    refused = policy.destination_refusal(d)
    doc: dict[str, Any] = {"number": d.e164, "kind": d.kind, "region": d.region, "dial": d.dial,
                           "domestic": d.domestic, "refused": refused}
    if a.facility and not refused:
        cls, rate = rating.rate_for(need_facility(store, a.facility), d)
        doc.update(facility=a.facility, dest_class=cls, rate_cents=rate)
        if rate is None:
            doc["refused"] = "international_not_allowed"
    if a.json:
        emit_json(doc)
        return 0
    pairs = [("number", d.e164), ("type", d.kind.replace("_", " ")),
             ("country", f"{d.region} ({'domestic' if d.domestic else 'international'})"), ("dialled as", d.dial)]
    if "dest_class" in doc:
        pairs.append(("rated", f"{doc['dest_class']} at {dollars(doc['rate_cents'])}/min" if doc["rate_cents"]
                      is not None else f"{doc['dest_class']}: not allowed at facility {a.facility}"))
    pairs.append(("inmates may call it", f"no: {reasons.describe(doc['refused'])}" if doc["refused"]
                  else "yes (once approved)"))
    fields(pairs)
    return 0


def numbers_migrate(store: Store, a) -> int:
    done = store.migrate_numbers()
    log.info("ops.numbers_migrate", migrated=len(done["migrated"]), kept_existing=len(done["kept_existing"]),
             unreadable=len(done["unreadable"]))
    if a.json:
        emit_json(done)
        return 0
    for line in done["migrated"]:
        out(f"migrated      {line}")
    for line in done["kept_existing"]:
        out(f"kept existing {line} (the E.164 entry was already there; the old one is gone)")
    for text in done["unreadable"]:
        out(f"unreadable    {text!r} (no phone number; left as it was)")
    out(f"{len(done['migrated'])} migrated, {len(done['kept_existing'])} already in E.164, "
        f"{len(done['unreadable'])} unreadable")
    return 0


def keys_migrate(store: Store, a) -> int:
    """Keys stored before hash tags renamed, as icsctl's Redis user (it alone may RESTORE);
    exit 1 while any is left (ics-fastagi will not start on them)."""
    done = store.migrate_keys()
    if any(done.values()):
        log.info("ops.keys_migrate", migrated=len(done["migrated"]), kept_existing=len(done["kept_existing"]),
                 refused=len(done["refused"]))
    if a.json:
        emit_json(done)
    elif any(done.values()) or not a.quiet:
        for line in done["migrated"]:
            out(f"migrated      {line}")
        for line in done["kept_existing"]:
            out(f"kept existing {line} (the tagged key was already there; the old one is gone)")
        for line in done["refused"]:
            out(f"refused       {line} (left as it was)")
        out(f"{len(done['migrated'])} migrated, {len(done['kept_existing'])} already there, "
            f"{len(done['refused'])} refused")
    if done["refused"]:
        return fail(f"{len(done['refused'])} account(s) left under the old layout: let their calls end "
                    "(the old version settles them), then run icsctl keys migrate again")
    return 0


# --- privileged numbers, investigators, audit ------------------------------------------

def number_rules(store: Store, a) -> int:
    """Show, set or clear a number's responses over its facility's (an attorney's PBX ...)."""
    a.number = need_number(a.number)
    if a.set is not None or a.clear:
        try:
            now = store.set_number_rules(a.number, "" if a.clear else a.set)
        except StoreError as exc:
            raise CliError(str(exc)) from None
        log.info("ops.number_rules", number=a.number, rules=now)
    now = store.number_rules(a.number)
    out(f"{a.number}: " + (", ".join(f"{k}={v}" for k, v in sorted(now.items())) or "the facility's responses"))
    return 0


def privileged_add(store: Store, a) -> int:
    a.number = need_number(a.number)
    store.set_privileged(a.number, one_line("--note", a.note))
    log.info("ops.privileged_add", number=a.number)
    out(f"{a.number} is privileged: calls to it are never recorded or monitored")
    return 0


def privileged_remove(store: Store, a) -> int:
    a.number = need_number(a.number)
    if not store.remove_privileged(a.number):
        raise CliError(f"{a.number} is not privileged")
    log.info("ops.privileged_remove", number=a.number)
    out(f"{a.number} is no longer privileged")
    return 0


def privileged_list(store: Store, a) -> int:
    numbers = store.privileged_numbers()
    if a.json:
        emit_json({"privileged": [{"number": n, "note": t} for n, t in numbers.items()]})
        return 0
    table(["NUMBER", "NOTE"], [[n, t] for n, t in numbers.items()], "no privileged numbers")
    return 0


def monitor_start(store: Store, a) -> int:
    by = one_line("--by", a.by)
    with livecalls.node_ami(store, livecalls.live_record(store, a.call_id).get("node")) as ami:
        mid = livecalls.monitor_start(store, ami, a.call_id, by, a.phone)
    log.info("ops.monitor_start", call_id=a.call_id, by=by, phone=a.phone, monitor=mid)
    out(f"monitor {mid}: ringing {a.phone}, listen only (stop: {PROG} monitor stop {mid} --by ...)")
    return 0


def monitor_stop(store: Store, a) -> int:
    by = one_line("--by", a.by)
    with livecalls.node_ami(store, livecalls.monitor_node(store, a.monitor_id)) as ami:
        mon = livecalls.monitor_stop(store, ami, a.monitor_id, by)
    log.info("ops.monitor_stop", call_id=mon["call"], by=by, monitor=a.monitor_id)
    out(f"monitor {a.monitor_id} stopped (call {mon['call']})")
    return 0


def monitor_cut(store: Store, a) -> int:
    by = one_line("--by", a.by)
    with livecalls.node_ami(store, livecalls.live_record(store, a.call_id).get("node")) as ami:
        livecalls.cut_off(store, ami, a.call_id, by)
    log.info("ops.cut_off", call_id=a.call_id, by=by)
    out(f"call {a.call_id} cut off")
    return 0


def audit_list(store: Store, a) -> int:
    rows = store.audit_entries(a.call)
    if a.json:
        emit_json({"audit": [{**r, "ts": int(r["ts"]), "at": iso(int(r["ts"]))} for r in rows]})
        return 0
    table(["WHEN (UTC)", "ACTION", "BY", "CALL", "DETAIL"],
          [[utc(int(r["ts"])), r["action"], r["by"], r.get("call"), r.get("detail")] for r in rows],
          "no audit entries")
    return 0


# --- command line ------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Manage the inmate calling platform (facilities, inmates, "
               "numbers, blocks, prepaid accounts, call records).")
    groups = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def command(sub, name: str, fn: Callable, help: str, json_out: bool = False) -> Parser:
        c = sub.add_parser(name, help=help, description=help)
        c.set_defaults(fn=fn)
        if json_out:
            c.add_argument("--json", action="store_true", help="one JSON document on stdout (money in *_cents)")
        return c

    fac = groups.add_parser("facility", help="facilities and their call settings").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(fac, "create", facility_create, "create a facility (renders its spoken name)")
    c.add_argument("fid", metavar="FID")
    c.add_argument("--name", required=True, help='spoken and shown name, e.g. "Cook County Jail"')
    for k in SETTINGS:
        default = config.DEFAULTS["facility_defaults"][k]
        is_text = isinstance(default, str)
        if isinstance(default, bool):
            c.add_argument("--" + k.replace("_", "-"), dest=k, type=on_off, metavar="on|off",
                           help=SETTING_HELP.get(k, "") + f"default {'on' if default else 'off'}")
            continue
        c.add_argument("--" + k.replace("_", "-"), dest=k,
                       type=str if is_text else non_negative_int if k in ZERO_OK else positive_int,
                       metavar="KEY" if k in DIGIT_SETTINGS else "TEXT" if is_text else "N",
                       help=SETTING_HELP.get(k, "") + f"default {default!r}" if is_text
                       else SETTING_HELP.get(k, "") + f"default {default}")
    c.add_argument("--no-audio", action="store_true",
                   help="do not render the spoken name (no espeak-ng); announcements then leave it out")
    command(fac, "list", facility_list, "list facilities", json_out=True)
    c = command(fac, "show", facility_show, "a facility's effective settings", json_out=True)
    c.add_argument("fid", metavar="FID")

    inm = groups.add_parser("inmate", help="inmates, PINs, names, approved numbers").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(inm, "create", inmate_create, "create an inmate")
    c.add_argument("iid", metavar="IID")
    c.add_argument("--facility", required=True, metavar="FID")
    c.add_argument("--name", required=True)
    c.add_argument("--pin", required=True, help="4 to 8 digits")
    c.add_argument("--replace", action="store_true",
                   help="the inmate exists: set this new PIN and name (a locked PIN is unlocked)")
    c = command(inm, "show", inmate_show, "an inmate's state (never the PIN)", json_out=True)
    c.add_argument("iid", metavar="IID")
    c = command(inm, "unlock", inmate_unlock, "unlock a locked PIN and clear wrong-PIN count")
    c.add_argument("iid", metavar="IID")
    c = command(inm, "import-name", inmate_import_name, "import a recording of the inmate's name (WAV)")
    c.add_argument("iid", metavar="IID")
    c.add_argument("file", metavar="FILE.wav")
    c = command(inm, "approve", inmate_approve, "approve a number for an inmate")
    c.add_argument("iid", metavar="IID")
    c.add_argument("number", metavar="NUMBER")
    c = command(inm, "numbers", inmate_numbers, "an inmate's approved numbers, blocks and accounts",
                json_out=True)
    c.add_argument("iid", metavar="IID")

    c = command(inm, "request", inmate_request, "put a number on the inmate's list, pending staff approval")
    c.add_argument("iid", metavar="IID")
    c.add_argument("number", metavar="NUMBER")
    c = command(inm, "reject", inmate_reject, "reject a number (it stays listed as rejected)")
    c.add_argument("iid", metavar="IID")
    c.add_argument("number", metavar="NUMBER")
    c = command(inm, "unit", inmate_unit, "move an inmate to a living unit (its schedule applies)")
    c.add_argument("iid", metavar="IID")
    c.add_argument("unit", metavar="UNIT")
    c = command(inm, "language", inmate_language, "the language the inmate hears (empty: the facility's)")
    c.add_argument("iid", metavar="IID")
    c.add_argument("language", metavar="LANG", help="a language of the prompt manifest, e.g. es")
    c = command(inm, "status", inmate_status, "active, restricted (weekly quota) or suspended")
    c.add_argument("iid", metavar="IID")
    c.add_argument("status", choices=INMATE_STATUSES)
    c.add_argument("--calls-per-week", type=positive_int, metavar="N", help="restricted: accepted calls")
    c.add_argument("--minutes-per-week", type=positive_int, metavar="N", help="restricted: billed minutes")

    un = groups.add_parser("unit", help="living units and their calling schedules").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(un, "create", unit_create, "create a living unit")
    c.add_argument("fid", metavar="FID")
    c.add_argument("uid", metavar="UNIT")
    c.add_argument("--name", required=True)
    c.add_argument("--schedule", help='e.g. "mon-fri 08:00-21:00; sat,sun 09:00-20:00" (facility time); '
                                      "default: the facility's")
    c = command(un, "schedule", unit_schedule, 'set a unit\'s schedule ("" = the facility\'s)')
    c.add_argument("fid", metavar="FID")
    c.add_argument("uid", metavar="UNIT")
    c.add_argument("schedule", metavar="SCHEDULE")
    c = command(un, "list", unit_list, "a facility's units, schedules and lockdowns", json_out=True)
    c.add_argument("fid", metavar="FID")

    lk = groups.add_parser("lockdown", help="refuse new calls from a facility or unit").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    for name, fn, help in (("on", lockdown_on, "start a lockdown (audited)"),
                           ("off", lockdown_off, "lift a lockdown (audited)")):
        c = command(lk, name, fn, help)
        c.add_argument("--facility", required=True, metavar="FID")
        c.add_argument("--unit", metavar="UNIT", help="one living unit (default: the whole facility)")
        c.add_argument("--by", required=True, help="who orders it")
        if name == "on":
            c.add_argument("--note", help="why")
            c.add_argument("--end-live", action="store_true",
                           help="also end calls in progress, with a prompt to both parties")

    nr = groups.add_parser("number", help="per-number settings").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(nr, "rules", number_rules, "a number's rule responses over its facility's")
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--set", metavar="RULES", help='e.g. "ringback=flag, dial_tone=warn, hold=off"')
    c.add_argument("--clear", action="store_true", help="back to the facility's responses")

    pv = groups.add_parser("privileged", help="attorney numbers: never recorded or monitored"
                           ).add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(pv, "add", privileged_add, "register a privileged number")
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--note", required=True, help='who it is, e.g. "Attorney J. Smith, bar 12345"')
    c = command(pv, "remove", privileged_remove, "unregister a privileged number")
    c.add_argument("number", metavar="NUMBER")
    command(pv, "list", privileged_list, "privileged numbers", json_out=True)

    mon = groups.add_parser("monitor", help="investigators: listen to a live call, cut it off (audited)"
                            ).add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(mon, "start", monitor_start, "ring PHONE and listen to the call (listen only)")
    c.add_argument("call_id", metavar="CALL_ID")
    c.add_argument("--phone", required=True, help="the investigator's SIP endpoint, e.g. investigator1")
    c.add_argument("--by", required=True, help="the investigator")
    c = command(mon, "stop", monitor_stop, "stop listening")
    c.add_argument("monitor_id", metavar="MONITOR_ID")
    c.add_argument("--by", required=True)
    c = command(mon, "cut", monitor_cut, "end the call now")
    c.add_argument("call_id", metavar="CALL_ID")
    c.add_argument("--by", required=True)

    c = groups.add_parser("audit", help="who monitored, cut off or locked down what, when",
                          description="the audit log")
    c.set_defaults(fn=audit_list)
    c.add_argument("--call", metavar="CALL_ID", help="only this call")
    c.add_argument("--json", action="store_true")

    blk = groups.add_parser("block", help="numbers blocked for an inmate or a facility").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    for name, fn, help in (("add", block_add, "block a number"), ("remove", block_remove, "unblock a number"),
                           ("list", block_list, "list blocked numbers")):
        c = command(blk, name, fn, help, json_out=name == "list")
        if name != "list":
            c.add_argument("number", metavar="NUMBER")
        who = c.add_mutually_exclusive_group(required=True)
        who.add_argument("--inmate", metavar="IID")
        who.add_argument("--facility", metavar="FID")

    acc = groups.add_parser("account", help="prepaid accounts").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(acc, "create", account_create, "create a prepaid, direct_bill or inmate_debit account")
    c.add_argument("aid", metavar="AID")
    c.add_argument("--type", choices=ACCOUNT_TYPES, default="prepaid",
                   help="prepaid (deposits pay for calls to its numbers), direct_bill (landline numbers "
                        "billed monthly up to --monthly-limit-cents), inmate_debit (the inmate's own "
                        "account, AID debit-IID); default prepaid")
    c.add_argument("--owner", help="who holds it (inmate_debit: defaults to the inmate's name)")
    c.add_argument("--number", action="append", metavar="NUMBER",
                   help="a number the account pays for (repeat for more; not for inmate_debit)")
    c.add_argument("--monthly-limit-cents", type=positive_int, metavar="N", help="direct_bill only")
    c.add_argument("--inmate", metavar="IID", help="inmate_debit only")
    c = command(acc, "language", account_language, "the language its numbers' called parties hear first")
    c.add_argument("aid", metavar="AID")
    c.add_argument("language", metavar="LANG", help="a language of the prompt manifest, e.g. es (empty: the facility's)")
    c = command(acc, "fund", account_fund, "deposit money")
    c.add_argument("aid", metavar="AID")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--cents", metavar="N", help="whole cents, e.g. 2000")
    how.add_argument("--amount", metavar="DOLLARS", help="dollars, e.g. 20.00 (no fractions of a cent)")
    c.add_argument("--note", default="icsctl deposit", help="ledger note")
    c = command(acc, "show", account_show, "balance, held, available, numbers", json_out=True)
    c.add_argument("aid", metavar="AID")
    c = command(acc, "ledger", account_ledger, "every money movement", json_out=True)
    c.add_argument("aid", metavar="AID")
    c = command(acc, "refund", account_refund, "refund money (never more than available: balance - held)")
    c.add_argument("aid", metavar="AID")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--cents", metavar="N", help="whole cents, e.g. 500")
    how.add_argument("--amount", metavar="DOLLARS", help="dollars, e.g. 5.00")
    how.add_argument("--all", action="store_true", help="everything available")
    c.add_argument("--note", default="icsctl refund", help="ledger note")

    accs = groups.add_parser("accounts", help="all accounts: expiry after 180 idle days, refunds due"
                             ).add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(accs, "expire", accounts_expire, "flag prepaid accounts idle 180 days as expired "
                "(idempotent; no money moves)", json_out=True)
    c.add_argument("--now-ms", type=positive_int, metavar="N", help="evaluate at this epoch ms (default now)")
    command(accs, "refunds-due", accounts_refunds_due, "expired accounts whose balance is owed back",
            json_out=True)

    led = groups.add_parser("ledger", help="ledger integrity").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    command(led, "check", ledger_check, "prove every balance equals its ledger and holds match live calls "
            "(exit 1 naming each account that does not); also counts calls whose recording came out short "
            "or missing", json_out=True)

    command(groups, "status", status, "the AMI listener's heartbeat and live calls / capacity.max_calls "
            "(exit 1 while the listener is down)", json_out=True)

    c = groups.add_parser("statement", help="monthly account statement (CSV or printable HTML)",
                          description="monthly account statement (CSV or printable HTML)")
    c.set_defaults(fn=statement)
    c.add_argument("aid", metavar="AID")
    c.add_argument("--month", required=True, metavar="YYYY-MM", help="UTC month, e.g. 2026-11")
    fmt = c.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", metavar="FILE")
    fmt.add_argument("--html", metavar="FILE")

    lid = groups.add_parser("lidb", help="line information: line type, collect block, new-number "
                            "restriction").add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(lid, "set", lidb_set, "record a number's line information")
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--line-type", required=True, choices=LINE_TYPES)
    c.add_argument("--collect-block", action="store_true", help="the carrier blocks collect calls")
    c.add_argument("--new-number", action="store_true", help="a new-number restriction applies")
    c = command(lid, "show", lidb_show, "a number's line information (unknown: by its number type, no blocks)",
                json_out=True)
    c.add_argument("number", metavar="NUMBER")

    num = groups.add_parser("numbers", help="what a typed number is; numbers stored before E.164").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(num, "check", numbers_check, "a number as the system reads it: E.164, country, type, "
                "whether inmates may call it and how a facility rates it", json_out=True)
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--facility", metavar="FID", help="rate it for this facility")
    c = command(num, "set", numbers_set, "a number's language and flags: free (never billed), unrecorded, "
                "tty (billed at most tty_rate_cents, audio rules off); every change audited")
    c.add_argument("number", metavar="NUMBER")
    c.add_argument("--language", metavar="LANG", help="what the called party hears first (empty: the account's)")
    for flag in ("free", "unrecorded", "tty"):
        c.add_argument(f"--{flag}", dest=flag, type=on_off, metavar="on|off")
    c.add_argument("--note", help='e.g. "PREA hotline"')
    c.add_argument("--by", required=True, metavar="WHO", help="who made the change (audited)")
    command(num, "migrate", numbers_migrate, "rewrite numbers stored in an older spelling as E.164 "
            "(ics-fastagi also does at start-up)", json_out=True)

    ky = groups.add_parser("keys", help="the Redis key layout: keys stored before hash tags").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(ky, "migrate", keys_migrate, "rename keys stored before hash tags (ics:account:fam1 -> "
                "ics:account:{a:fam1}, ledgers, inmates); idempotent; run once when upgrading, before "
                "ics-fastagi starts (it refuses to start while one is left); exit 1 if an account was left",
                json_out=True)
    c.add_argument("--quiet", action="store_true", help="print nothing when there is nothing to rename")

    cl = groups.add_parser("calls", help="call records").add_subparsers(
        dest="cmd", required=True, metavar="SUBCOMMAND")
    c = command(cl, "list", calls_list, "most recent calls first", json_out=True)
    c.add_argument("--limit", type=positive_int, default=20, metavar="N")
    c = command(cl, "show", calls_show, "every field of one call", json_out=True)
    c.add_argument("call_id", metavar="CALL_ID")
    c = command(cl, "settle", calls_settle, "settle an ended call again (idempotent): completes a "
                "settlement left half-done (icsctl ledger check)")
    c.add_argument("call_id", metavar="CALL_ID")
    return p


def fail(message: str, status: int = 1) -> int:
    """One line on stderr, whatever the message (ffmpeg and friends answer in pages)."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()] or ["failed"]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    print(f"{PROG}: {text}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:  # already "icsctl <command>: <problem>"
        print(exc, file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0

    url = "?"
    try:
        cfg = config.load()
        url = cfg["redis"]["url"]
        logs.setup(cfg["log"]["format"], cfg["log"]["level"])
        try:
            r = connect(cfg)
        except ValueError as exc:
            return fail(f"redis.url {redacted(url)!r} is not usable: {exc}")
        return args.fn(Store(r, cfg), args)
    except (CliError, StoreError, ConfigError, audio.AudioError, AmiError) as exc:
        return fail(str(exc))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        return fail(f"cannot reach Redis at {redacted(url)}: {exc}")
    except redis.exceptions.RedisError as exc:
        return fail(f"Redis error: {exc}")
    except OSError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
