"""Layered configuration: defaults here, then a TOML file, then ICS_* environment.

Every layer is validated against DEFAULTS at start-up: an unknown key (a typo) or
a value of the wrong type stops the service with a message naming the key and
where it came from, instead of surfacing mid-call.

Environment names are ICS_<SECTION>_<KEY> upper-cased, e.g. ICS_REDIS_URL,
ICS_AMI_SECRET, ICS_FACILITY_DEFAULTS_TIME_LIMIT_S.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import destination, policy, prompts, rating

DEFAULT_CONFIG_PATH = "/etc/ics/ics.toml"

DEFAULTS: dict[str, dict[str, Any]] = {
    "node": {
        # this call node (one Asterisk with its FastAGI server and AMI listener): its calls'
        # records and its heartbeat carry it; a cluster's nodes each have their own (README, Cluster)
        "id": "main",
    },
    "redis": {
        # one URL: a single Redis; several, comma-separated (or cluster = true): the nodes a Redis
        # Cluster client starts from (it learns the rest from them); rediss://... for TLS (tls_ca
        # then names the CA to trust)
        "url": "redis://127.0.0.1:6380/0",
        "cluster": False,
        "timeout_ms": 2000,
        # after every money script, WAIT until this many replicas have it (0 = do not wait), at
        # most wait_timeout_ms; a write no replica confirmed in time is logged (redis.wait_short)
        "wait_replicas": 0,
        "wait_timeout_ms": 200,
        # each service logs in as its own Redis ACL user (docker/redis-acl.py writes the users and
        # their rights; ICS_REDIS_USERNAME / ICS_REDIS_PASSWORD per service); "" = the default user
        "username": "",
        "password": "",
        "tls_ca": "",  # CA file a rediss:// server's certificate must chain to
    },
    "fastagi": {
        "host": "127.0.0.1",  # the node's own address across hosts (Asterisk on it is the only client)
        "port": 4573,
        "max_sessions": 400,
        "metrics_port": 9573,  # /metrics and /health (ics.metrics); 0 = not served
        # asked to stop (SIGTERM) it takes no new AGI session and waits this long at most for the ones
        # it serves (a call's settlement runs in one): the longest call plus its backstop and hang-up
        "drain_timeout_s": 930,
    },
    "ami": {
        "host": "127.0.0.1",
        "port": 5038,
        "user": "ics",
        "secret": "",
        "ping_interval_s": 5,
        "ping_timeout_s": 3,
        # the listener's own AMI user: reads only the events its rules need (manager.conf eventfilter)
        "listener_user": "ics-listener",
        # a hang-up the listener could not settle (Redis away) is retried every settle_retry_ms, for at
        # most settle_retry_max_s; unsettled calls nobody saw end are looked for every orphan_scan_s
        "settle_retry_ms": 1000,
        "settle_retry_max_s": 21600,
        "orphan_scan_s": 30,
        # the three-way tone detector on each bridged call's called leg (README, Three-way calls):
        # detector = "module": Asterisk's res_ics_tonewatch (ICS_TONEWATCH) in the leg's own thread,
        # raising ICSTone events; "tap": the leg's audio into the listener's AudioSocket server
        # (ami.audiotap, tap_host/tap_port). tap = false: no detector (the audio rules never fire:
        # benchmarks' baseline)
        "tap": True,
        "detector": "module",
        "tap_host": "127.0.0.1",
        "tap_port": 4575,
        "metrics_port": 9574,  # the listener's /metrics and /health (ics.metrics); 0 = not served
        # added to the listener's niceness at start (0-19): its work waits in Asterisk's AMI queue, the
        # calls' audio cannot, so on a box short of CPU Asterisk's threads run first (README, Capacity)
        "nice": 5,
    },
    "metrics": {
        "host": "127.0.0.1",  # where both services serve /metrics and /health: never a public address
    },
    "recordings": {
        # Host path of Asterisk's monitor directory: MixMonitor files live under
        # ics/<facility>/<inmate>/<YYYY-MM-DD>/<call id>.wav in it.
        "dir": "/var/spool/asterisk/monitor",
        # a recording this much shorter than the call's bridged time is flagged as audio lost
        # (ics.recordings): normal calls measure within about 20 ms of the bridge
        "max_short_ms": 1000,
        # who records a non-privileged call (README, Recording): "capture", ics-recorder copying the
        # called leg's RTP from the kernel and writing the WAV after the call (ics/recorder.py), off
        # Asterisk's per-frame path; or "mixmonitor", Asterisk's MixMonitor on the called channel
        # (a thread per call waking every frame: about a third of a recorded call's Asterisk CPU)
        "method": "capture",
        # ics-recorder: where the call flow reaches it (loopback) and the interface it captures on
        # (the one Asterisk's RTP crosses: lo in the lab, the facility network's in production)
        "recorder_host": "127.0.0.1",
        "recorder_port": 4577,
        "capture_device": "lo",
        # added to ics-recorder's niceness at start (0-19): the kernel's ring holds seconds of packets,
        # the calls' audio in Asterisk nothing, so Asterisk's threads run first (README, Capacity)
        "recorder_nice": 5,
    },
    "capacity": {
        # inmate calls this box carries at once: a new one past them is refused with the busy prompt
        # (capacity_full, admission control: ics.capacity). At or below the box's clean ceiling with
        # recording on (make capacity; README, Capacity): 150-160 on the 2-core lab machine in the
        # latest runs, so 100 leaves headroom. RTP ports for them are checked at FastAGI start-up
        # (check_rtp_range).
        "max_calls": 100,
        # the rtp.conf Asterisk loads (docker/stack.sh points at the rendered one in its root)
        "rtp_conf": "/etc/asterisk/rtp.conf",
    },
    "sounds": {
        # Host path of the directory Asterisk knows as "<sounds>/ics": it holds
        # prompts/ (generated) and names/ (recorded or imported).
        "dir": "/var/lib/asterisk/sounds/ics",
    },
    "dial": {
        # {number}: the digits as dialled from the US (10 digits inside the NANP, 011... elsewhere;
        # the lab's PJSIP endpoints are named so); {e164}: +13125550100. Both come from a parsed
        # Destination (digits only). Production points at a trunk, e.g. "PJSIP/{e164}@carrier".
        "template": "PJSIP/{number}",
        "ring_timeout_s": 30,
    },
    "log": {
        "format": "auto",  # auto: console on a TTY, JSON lines otherwise
        "level": "info",
    },
    # Per-facility settings; a facility in Redis overrides any of these.
    "facility_defaults": {
        "accept_digit": "1",
        "refuse_digit": "2",
        "quote_digit": "3",
        "block_digit": "9",
        # the provider, how to hear the rate, and how to reach billing and complaints, read out
        # (47 CFR 64.710); billing_phone is said digit by digit
        "info_digit": "0",
        "billing_phone": "8005550199",
        "menu_timeout_s": 6,
        "time_limit_s": 900,
        "pin_max_tries": 3,
        "pin_lock_after": 6,
        # Rating (ics.rating): integer cents per minute. FCC 25-75 caps every domestic
        # rate by facility type and ADP, plus facility_cost_cents (0..2); a rate over
        # its cap stops start-up or facility creation.
        "type": "prison",  # prison | jail (a jail's cap depends on adp)
        "adp": 0,  # average daily population
        "facility_cost_cents": 0,  # FCC facility-cost additive, 0..2 cents/min
        "rate_cents_per_min": 11,  # the rate of any domestic class without its own
        "rate_local_cents": 0,  # 0: use rate_cents_per_min
        "rate_instate_cents": 0,  # 0: use rate_cents_per_min
        "rate_interstate_cents": 0,  # 0: use rate_cents_per_min
        # international calls, per country: "GB:12:1200, JM:15:4000" = ISO country code, rate in
        # cents/min, termination cost in millicents/min; each rate at most the domestic cap plus
        # its termination cost (FCC). "" = no international calls.
        "international": "",
        "tax_bps": 0,  # taxes passed through, basis points of the call total
        "local_npas": "",  # comma-separated area codes billed as local
        "state_npas": "",  # comma-separated area codes billed as in-state
        # Disconnect rules of the AMI listener (ami/rules.py), each on/off with its threshold
        "rule_hold": True,  # Hold on either leg (call waiting, hold) ...
        "hold_grace_s": 3,  # ... not undone within this many seconds (0: at once)
        "rule_hook_flash": True,  # hook flash on either leg (three-way attempt)
        "rule_transfer": True,  # transfers, conferences, a third channel in the bridge
        "rule_silence": True,
        "silence_s": 30,  # no talking on either leg this long
        "rule_extra_digits": True,
        "digits_max": 3,  # more keypad digits than this from the called side ...
        "digits_window_s": 10,  # ... within this many seconds
        "warn_before_s": "60,30",  # notices to both parties this many seconds before the time limit
        # What each rule does when it fires (README "Three-way calls"): disconnect, warn (both hear
        # the three-way warning; the next rule that fires disconnects), flag (the call goes on; the
        # record and the investigators' alert stream keep the evidence) or off. "" = DEFAULT_RESPONSES;
        # e.g. "hold=warn, dead_air=off". A number can override its facility (icsctl number rules).
        "responses": "",
        # the called leg's audio (ami/tones.py): the carrier's tone plan and each signature's threshold
        "tone_plan": "na",  # na (350+440 dial, 440+480 ringback, 480+620 busy) | eu (425 Hz, by cadence)
        "dial_tone_ms": 800,  # dial tone held this long
        "ringback_ms": 800,  # two-frequency ringback held this long
        "busy_bursts": 2,  # busy / reorder bursts in cadence
        "drop_min_ms": 300,  # dead air (digital silence right after sound) this long
        "sequence_window_s": 8,  # flash_sequence: dead air, then a tone or digits within this
        # in-band keypad tones from the called side: more than this within digits_window_s (a
        # number being dialled is 7 or more; an IVR menu takes one or two a prompt)
        "inband_digits_max": 6,
        # a hook flash, hold or transfer before the bridge (announcement, menu): "end" the call
        # (that rule's reason, nothing billed) or only "record" it on the call; a rule that is off never ends it
        "before_accept": "end",
        # Policy (ics.policy): schedules are read in the facility's time zone; a living
        # unit's schedule replaces the facility's; "" = calls at any time.
        "timezone": "UTC",  # IANA name, e.g. America/Chicago
        "schedule": "",  # e.g. "mon-fri 08:00-21:00; sat,sun 09:00-20:00"
        "approved_max": 20,  # numbers per inmate, pending and approved together
        "notice_interval_s": 0,  # in-call "correctional facility" notice to the called party; 0 = off
        "caller_id": "",  # outbound caller ID number (a US number); "" = withheld (anonymous)
        # the inmate dialled an emergency number: false = "emergency calls cannot be made from this
        # phone, tell an officer"; true = the facility routes them elsewhere and the prompt says so
        "emergency_routed": False,
        # Languages (ics/prompts.py, the manifest's): what an inmate without a language of their own
        # hears, and a called party whose number and account set none; the key a called party
        # presses to switch, before choosing, to another language (not one of the menu keys)
        "language": "en",
        "lang_switch_digit": "8",
        # Relay for deaf and hard-of-hearing callers (47 CFR 64.6040): these destinations (711, a TRS
        # or captioned-telephone provider's number; comma-separated) are always allowed whatever the
        # approved list says, never billed (rate 0, nothing held), and the audio rules (silence,
        # extra_digits, tones: ami/rules.py AUDIO_RULES) are off for them, as for calls to a number
        # marked tty (icsctl numbers set N --tty), which are billed at most tty_rate_cents (0: free)
        "relay_numbers": "",
        "relay_recorded": True,  # recorded like any call (false: never recorded)
        "tty_rate_cents": 0,
        # numbers marked free (icsctl numbers set N --free: PREA lines, public defenders): outside
        # schedules and weekly quotas when true
        "free_lines_anytime": True,
        # a number nobody can be billed for (needs_prepaid) may get one free courtesy call of this
        # many seconds (whole minutes), once per number, ending with how to open a prepaid account;
        # 0 = off
        "courtesy_call_s": 0,
    },
}

BEFORE_ACCEPT = ("end", "record")  # facility_defaults before_accept
RESPONSES = ("disconnect", "warn", "flag", "off")
DETECTORS = ("module", "tap")  # ami.detector: the three-way tone detector
# every rule of the AMI listener (ami/rules.py) and what it does unless configured otherwise;
# dead air alone is weak evidence (a dropped cell packet, a mute button): flagged, never cut
DEFAULT_RESPONSES: dict[str, str] = {
    "hold": "disconnect", "hook_flash": "disconnect", "transfer": "disconnect", "conference": "disconnect",
    "silence": "disconnect", "extra_digits": "disconnect",
    "dial_tone": "disconnect", "ringback": "disconnect", "busy": "disconnect", "sit": "disconnect",
    "inband_digits": "disconnect", "dead_air": "flag", "flash_sequence": "disconnect",
}


def parse_responses(text: str) -> dict[str, str]:
    """'hold=warn, dead_air=off' -> {'hold': 'warn', 'dead_air': 'off'}; a bad rule or response raises."""
    out: dict[str, str] = {}
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        rule, sep, response = (x.strip() for x in part.partition("="))
        if not sep or rule not in DEFAULT_RESPONSES or response not in RESPONSES:
            raise ValueError(f"responses takes rule=response pairs (rules: {', '.join(DEFAULT_RESPONSES)}; "
                             f"responses: {', '.join(RESPONSES)}), got {part!r}")
        out[rule] = response
    return out


FACILITY_DIGIT_KEYS = ("accept_digit", "refuse_digit", "quote_digit", "block_digit", "info_digit")


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or of the wrong type."""


def parse_warnings(text: str) -> tuple[int, ...]:
    """warn_before_s '60,30' -> (60, 30): seconds before the time limit, nearest last."""
    out = set()
    for part in str(text).split(","):
        part = part.strip()
        if part:
            if not part.isdigit() or int(part) <= 0:
                raise ValueError(f"warn_before_s takes positive whole seconds separated by commas, got {text!r}")
            out.add(int(part))
    return tuple(sorted(out, reverse=True))


def _check_facility(values: Mapping[str, Any], where: str) -> None:
    digits = [values[k] for k in FACILITY_DIGIT_KEYS]
    for key in FACILITY_DIGIT_KEYS:
        d = values[key]
        if not (isinstance(d, str) and len(d) == 1 and d in "0123456789*#"):
            raise ConfigError(f"{where}: {key} must be one keypad key (0-9, * or #), got {d!r}")
    if len(set(digits)) != len(digits):
        raise ConfigError(f"{where}: accept/refuse/quote/block/info digits must differ, got {digits}")
    if values["time_limit_s"] < 60:
        raise ConfigError(f"{where}: time_limit_s must be at least 60 (calls are sold by the minute)")
    for key in ("menu_timeout_s", "time_limit_s", "rate_cents_per_min", "pin_max_tries", "pin_lock_after",
                "silence_s", "digits_max", "digits_window_s"):
        if values[key] <= 0:
            raise ConfigError(f"{where}: {key} must be positive, got {values[key]}")
    _check_languages(values, where)
    courtesy = values["courtesy_call_s"]
    if courtesy and not (courtesy % 60 == 0 and MIN_COURTESY_S <= courtesy <= MAX_COURTESY_S):
        raise ConfigError(f"{where}: courtesy_call_s is 0 (off) or whole minutes from {MIN_COURTESY_S} to "
                          f"{MAX_COURTESY_S} s, got {courtesy}")
    try:
        bp = destination.parse(values["billing_phone"])
    except destination.NumberError as exc:
        raise ConfigError(f"{where}: billing_phone: {exc}") from None
    if bp.short:
        raise ConfigError(f"{where}: billing_phone must be a whole number, got {values['billing_phone']!r}")
    if values["tty_rate_cents"] < 0:
        raise ConfigError(f"{where}: tty_rate_cents must not be negative, got {values['tty_rate_cents']}")
    if values["pin_lock_after"] < values["pin_max_tries"]:
        raise ConfigError(f"{where}: pin_lock_after must be >= pin_max_tries")
    if values["hold_grace_s"] < 0:
        raise ConfigError(f"{where}: hold_grace_s must not be negative, got {values['hold_grace_s']}")
    if values["before_accept"] not in BEFORE_ACCEPT:
        raise ConfigError(f"{where}: before_accept must be one of {', '.join(BEFORE_ACCEPT)}, "
                          f"got {values['before_accept']!r}")
    try:
        parse_warnings(values["warn_before_s"])
        parse_responses(values["responses"])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    from ami.tones import PLANS  # the plans are data beside the detector that reads them
    if values["tone_plan"] not in PLANS:
        raise ConfigError(f"{where}: tone_plan must be one of {', '.join(PLANS)}, got {values['tone_plan']!r}")
    for key, low, high in (("dial_tone_ms", 200, 5000), ("ringback_ms", 200, 5000), ("busy_bursts", 1, 10),
                           ("drop_min_ms", 100, 5000), ("sequence_window_s", 1, 60),
                           ("inband_digits_max", 1, 30)):
        if not low <= values[key] <= high:
            raise ConfigError(f"{where}: {key} must be {low} to {high}, got {values[key]}")
    _check_rating(values, where)
    _check_policy(values, where)


def _check_languages(values: Mapping[str, Any], where: str) -> None:
    """The facility's language is one the manifest has; the switch key is a keypad key that is
    none of the menu's; relay numbers are numbers."""
    if values["language"] not in prompts.TEXTS:
        raise ConfigError(f"{where}: language {values['language']!r} has no prompts in {prompts.MANIFEST_PATH} "
                          f"(known: {', '.join(prompts.LANGUAGES)})")
    d = values["lang_switch_digit"]
    if not (isinstance(d, str) and len(d) == 1 and d in "0123456789*#"):
        raise ConfigError(f"{where}: lang_switch_digit must be one keypad key (0-9, * or #), got {d!r}")
    taken = {values[k]: k for k in FACILITY_DIGIT_KEYS}
    if d in taken:
        raise ConfigError(f"{where}: lang_switch_digit {d!r} is already the menu's {taken[d]}")
    try:
        relay_numbers(values["relay_numbers"])
    except destination.NumberError as exc:
        raise ConfigError(f"{where}: relay_numbers: {exc}") from None


MIN_COURTESY_S, MAX_COURTESY_S = 60, 600  # a courtesy call is short: one to ten minutes


def relay_numbers(text: str) -> set[str]:
    """relay_numbers "711, 8005551234" -> their E.164 spellings (a short code keeps its digits)."""
    return {destination.parse(part.strip()).e164 for part in str(text).split(",") if part.strip()}


# recordings.max_short_ms: below 200 ms the normal jitter of a bridge's start and end would flag
# good recordings; above a minute a lost minute of evidence would go unflagged
MIN_SHORT_MS, MAX_SHORT_MS = 200, 60_000
RECORDING_METHODS = ("capture", "mixmonitor")
MIN_NOTICE_INTERVAL_S = 15  # a shorter interval would talk over the whole call


def _check_policy(values: Mapping[str, Any], where: str) -> None:
    """Time zone, schedule, approved-list size, in-call notice and caller ID."""
    try:
        policy.zone(values["timezone"])
        policy.parse_schedule(values["schedule"])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if values["approved_max"] <= 0:
        raise ConfigError(f"{where}: approved_max must be positive, got {values['approved_max']}")
    notice = values["notice_interval_s"]
    if notice and not MIN_NOTICE_INTERVAL_S <= notice < values["time_limit_s"]:
        raise ConfigError(f"{where}: notice_interval_s is 0 (off) or {MIN_NOTICE_INTERVAL_S} s up to "
                          f"less than time_limit_s ({values['time_limit_s']}), got {notice}")
    if values["caller_id"]:
        try:
            d = destination.parse(values["caller_id"])
        except destination.NumberError as exc:
            raise ConfigError(f"{where}: caller_id: {exc}") from None
        if not d.domestic or d.short:
            raise ConfigError(f"{where}: caller_id is a US number (or empty: withheld), "
                              f"got {values['caller_id']!r} ({d.kind}, {d.region})")


MAX_TAX_BPS = 5000  # 50 %: anything above is a typo (bps, not percent)


def _check_rating(values: Mapping[str, Any], where: str) -> None:
    """Facility type, ADP, class rates, tax and area codes; then the FCC caps."""
    if values["type"] not in rating.FACILITY_TYPES:
        raise ConfigError(f"{where}: type must be prison or jail, got {values['type']!r}")
    for key in ("adp", "rate_local_cents", "rate_instate_cents", "rate_interstate_cents",
                "tax_bps", "facility_cost_cents"):
        if values[key] < 0:
            raise ConfigError(f"{where}: {key} must not be negative, got {values[key]}")
    if values["facility_cost_cents"] > rating.MAX_FACILITY_COST_CENTS:
        raise ConfigError(f"{where}: facility_cost_cents is at most {rating.MAX_FACILITY_COST_CENTS} "
                          f"(the FCC 25-75 facility-cost additive), got {values['facility_cost_cents']}")
    if values["tax_bps"] > MAX_TAX_BPS:
        raise ConfigError(f"{where}: tax_bps is basis points (100 = 1 %) and at most {MAX_TAX_BPS}, "
                          f"got {values['tax_bps']}")
    npas = {}
    for key in ("local_npas", "state_npas"):
        try:
            npas[key] = rating.parse_npas(values[key])
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    both = npas["local_npas"] & npas["state_npas"]
    if both:
        raise ConfigError(f"{where}: area codes {', '.join(sorted(both))} are in both local_npas "
                          "and state_npas")
    try:
        rating.parse_international(values["international"])
    except ValueError as exc:
        raise ConfigError(f"{where}: international: {exc}") from None
    try:
        rating.check_caps(values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# RTP ports a call needs: two channels (handset, called party), each an even RTP port and the
# odd RTCP one; doubled as headroom for channels being set up or torn down and for Asterisk's
# random choice of ports (dialplan/rtp.conf explains the sizing)
PORTS_PER_CALL = 4
RTP_HEADROOM = 2
MAX_CALLS_LIMIT = 10_000
NODE_ID_RE = re.compile(r"^[a-z0-9-]{1,16}$")


def rtp_ports_needed(max_calls: int) -> int:
    return max_calls * PORTS_PER_CALL * RTP_HEADROOM


def read_rtp_range(path: str | Path) -> tuple[int, int]:
    """rtpstart and rtpend of an Asterisk rtp.conf's [general] section."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"capacity.rtp_conf: cannot read {path}: {exc.strerror or exc}") from None
    found, section = {}, ""
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if line.startswith("[") and "]" in line:
            section = line[1:line.index("]")].strip()
        elif section == "general" and "=" in line:
            key, _, value = line.partition("=")
            key, value = key.strip(), value.lstrip(">").strip()  # "=" or "=>"
            if key in ("rtpstart", "rtpend"):
                if not value.isdigit():
                    raise ConfigError(f"{path}: {key} must be a port number, got {value!r}")
                found[key] = int(value)
    missing = [k for k in ("rtpstart", "rtpend") if k not in found]
    if missing:
        raise ConfigError(f"{path}: no {' or '.join(missing)} in [general] (Asterisk would use its defaults)")
    return found["rtpstart"], found["rtpend"]


def check_rtp_range(path: str | Path, max_calls: int) -> int:
    """Refuse a range too small for max_calls (a call past it would get no media port).
    Returns the number of ports."""
    start, end = read_rtp_range(path)
    ports = end - start + 1
    need = rtp_ports_needed(max_calls)
    if ports < need:
        raise ConfigError(
            f"{path}: rtpstart={start} rtpend={end} gives {ports} RTP ports, but capacity.max_calls={max_calls} "
            f"needs {need} ({max_calls} calls x 2 channels x RTP+RTCP = {max_calls * PORTS_PER_CALL}, "
            f"x{RTP_HEADROOM} headroom): raise rtpend to at least {start + need - 1} or lower capacity.max_calls")
    return ports


def coerce(section: str, key: str, raw: Any, where: str) -> Any:
    """Convert raw (from TOML or a string from the environment) to the default's type."""
    expected = type(DEFAULTS[section][key])
    if isinstance(raw, expected) and not (expected is int and isinstance(raw, bool)):
        return raw
    if isinstance(raw, str):
        try:
            if expected is int:
                return int(raw.strip(), 10)
            if expected is bool:
                if raw.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.strip().lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
        except ValueError:
            pass
    raise ConfigError(
        f"{where}: {section}.{key} must be {expected.__name__}, got {raw!r}"
    )


def _unknown(name: str, known: list[str], where: str) -> ConfigError:
    hint = difflib.get_close_matches(name, known, n=1)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    if name.endswith("rate_international_cents"):  # removed: one uncapped rate for every country
        more = " (replaced by international: a rate per country, capped; see README)"
    return ConfigError(f"{where}: unknown setting {name!r}{more}")


@dataclass(frozen=True)
class Config:
    values: dict[str, dict[str, Any]]
    sources: tuple[str, ...]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    @property
    def sounds_dir(self) -> Path:
        return Path(self.values["sounds"]["dir"])

    @property
    def recordings_dir(self) -> Path:
        return Path(self.values["recordings"]["dir"])


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the TOML file (ICS_CONFIG or /etc/ics/ics.toml if present), then env."""
    env = os.environ if environ is None else environ
    values = copy.deepcopy(DEFAULTS)
    sources = ["defaults"]

    file_path = path or env.get("ICS_CONFIG") or (DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None)
    if file_path:
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {file_path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file_path}: not valid TOML: {exc}") from None
        for section, table in data.items():
            if section not in DEFAULTS:
                raise _unknown(section, list(DEFAULTS), file_path)
            if not isinstance(table, dict):
                raise ConfigError(f"{file_path}: [{section}] must be a table")
            for key, raw in table.items():
                if key not in DEFAULTS[section]:
                    raise _unknown(f"{section}.{key}", [f"{section}.{k}" for k in DEFAULTS[section]], file_path)
                values[section][key] = coerce(section, key, raw, file_path)
        sources.append(file_path)

    env_names = {
        f"ICS_{section}_{key}".upper(): (section, key)
        for section in DEFAULTS for key in DEFAULTS[section]
    }
    for name, raw in env.items():
        if not name.startswith("ICS_") or name in ("ICS_CONFIG", "ICS_STACK_DIR"):
            continue
        if name not in env_names:
            # Only flag names that look like ours but are misspelt; other ICS_*
            # variables (test and stack helpers) are not configuration.
            hint = difflib.get_close_matches(name, list(env_names), n=1, cutoff=0.85)
            if hint:
                raise ConfigError(f"environment: unknown setting {name!r} (did you mean {hint[0]!r}?)")
            continue
        section, key = env_names[name]
        values[section][key] = coerce(section, key, raw, "environment")
        if "environment" not in sources:
            sources.append("environment")

    try:  # every language of the prompt manifest complete, with its voice
        prompts.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _check_facility(values["facility_defaults"], "facility_defaults")
    _check_redis(values["redis"])
    if values["log"]["format"] not in ("auto", "json", "console"):
        raise ConfigError(f"log.format must be auto, json or console, got {values['log']['format']!r}")
    check_dial_template(values["dial"]["template"])
    if not 1 <= values["capacity"]["max_calls"] <= MAX_CALLS_LIMIT:
        raise ConfigError(f"capacity.max_calls must be 1 to {MAX_CALLS_LIMIT}, got {values['capacity']['max_calls']}")
    if not NODE_ID_RE.match(values["node"]["id"]):
        raise ConfigError(f"node.id must be 1 to 16 lower-case letters, digits or '-', got {values['node']['id']!r}")
    if values["recordings"]["method"] not in RECORDING_METHODS:
        raise ConfigError(f"recordings.method must be {' or '.join(RECORDING_METHODS)}, "
                          f"got {values['recordings']['method']!r}")
    if not 1 <= values["recordings"]["recorder_port"] <= 65535:
        raise ConfigError(f"recordings.recorder_port must be a port (1-65535), got {values['recordings']['recorder_port']}")
    short = values["recordings"]["max_short_ms"]
    if not MIN_SHORT_MS <= short <= MAX_SHORT_MS:
        raise ConfigError(f"recordings.max_short_ms must be {MIN_SHORT_MS} to {MAX_SHORT_MS} ms, got {short}")
    for where, key in (("ami", "nice"), ("recordings", "recorder_nice")):
        if not 0 <= values[where][key] <= 19:  # below 0 it would run ahead of Asterisk, and needs root
            raise ConfigError(f"{where}.{key} must be 0 to 19 (added to the service's niceness), got {values[where][key]}")
    for where, key in (("fastagi", "metrics_port"), ("ami", "metrics_port")):
        if not 0 <= values[where][key] <= 65535:
            raise ConfigError(f"{where}.{key} must be a port (1-65535) or 0 (not served), got {values[where][key]}")
    if values["fastagi"]["drain_timeout_s"] < 0:
        raise ConfigError(f"fastagi.drain_timeout_s must not be negative, got {values['fastagi']['drain_timeout_s']}")
    if values["ami"]["detector"] not in DETECTORS:
        raise ConfigError(f"ami.detector must be one of {', '.join(DETECTORS)}, got {values['ami']['detector']!r}")
    for key in ("settle_retry_ms", "settle_retry_max_s", "orphan_scan_s"):
        if values["ami"][key] <= 0:  # 0 would make the listener's upkeep loop spin
            raise ConfigError(f"ami.{key} must be greater than 0, got {values['ami'][key]}")
    return Config(values=values, sources=tuple(sources))


def yield_cpu(nice: int) -> None:
    """Add nice to every thread of this process (Linux nice is per thread: numpy's pool may already
    run); threads started later inherit their starter's. For services off the calls' audio path."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.setpriority(os.PRIO_PROCESS, int(tid), min(19, os.getpriority(os.PRIO_PROCESS, int(tid)) + nice))


def redis_urls(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


def _check_redis(values: Mapping[str, Any]) -> None:
    urls = redis_urls(values["url"])
    if not urls or any(not u.startswith(("redis://", "rediss://", "unix://")) for u in urls):
        raise ConfigError(f"redis.url must be one redis:// URL, or several comma-separated for a cluster, "
                          f"got {values['url']!r}")
    if not 0 <= values["wait_replicas"] <= 5:
        raise ConfigError(f"redis.wait_replicas must be 0 to 5, got {values['wait_replicas']}")
    if not 1 <= values["wait_timeout_ms"] <= 10_000:
        raise ConfigError(f"redis.wait_timeout_ms must be 1 to 10000, got {values['wait_timeout_ms']}")


def check_dial_template(template: str) -> None:
    """{number} or {e164}, nothing else in braces (a typo would fail the first call)."""
    if "{number}" not in template and "{e164}" not in template:
        raise ConfigError("dial.template must contain {number} or {e164}")
    try:
        template.format(number="3125550100", e164="+13125550100")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"dial.template {template!r}: only {{number}} and {{e164}} are filled in ({exc})") from None


def facility_settings(defaults: Mapping[str, Any], stored: Mapping[str, str], where: str) -> dict[str, Any]:
    """Merge a facility's stored overrides (strings from Redis) over the defaults, validated."""
    merged = dict(defaults)
    for key, raw in stored.items():
        if key in DEFAULTS["facility_defaults"]:
            merged[key] = coerce("facility_defaults", key, raw, where)
    _check_facility(merged, where)
    return merged
