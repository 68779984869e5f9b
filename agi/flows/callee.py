"""Called-party side, run by Dial's U() gosub once the outside phone answers.

"This is a prepaid call from <name>, an inmate at <facility>. This call is
subject to recording and monitoring." in the called party's language (their
number's, else their account's, else the facility's), first offering the others
("Para español, oprima 8": the facility's lang_switch_digit, which switches and
restarts the announcement, or the menu, in that language, any time before a choice;
offered once, at the start: repeated before every menu it held up each choice) (not said on a privileged, attorney call,
which is never recorded). Then the menu: accept, refuse, rate
quote (then the menu again), block. No key or a wrong key: one reprompt, then
goodbye. Only "accept" leaves GOSUB_RESULT unset, which lets Dial bridge.

On a recorded call the recording notice is always heard in full before the
bridge: a key pressed during or before it still counts as the choice; on
"accept" the notice then plays, uninterrupted, before "Connecting" (from where
the key stopped it, when the key came during the notice; else all of it).

Asterisk does not notice the inmate hanging up while this gosub runs. The AMI
listener ends the called leg for it at once (ami/listener.py); as a fallback,
and always right before the bridge, this flow reads the inmate channel's
CHANNEL(hangupsource) between prompts: once the inmate is gone the called party
hears so, the call is not bridged, and nothing is recorded or charged.

Every normal end sets ICS_MENU_DONE=1 (last, after GOSUB_RESULT). A session that ends
without it (the FastAGI server died, Redis failed and this flow raised) is a menu
fault: [ics-callee] tells both parties and settlement records system_error.
"""

from __future__ import annotations

import structlog

from ics import destination, prompts, rating, recorder, records
from ics.store import now_ms

from .. import channelvars as V
from ..session import Session

log = structlog.get_logger("agi")

CALL_ID_RE = records.CALL_ID_RE
MAX_QUOTES = 3  # a held-down quote key cannot keep the line open forever
INMATE_GONE_PROMPT = "cut-inmate_hangup_before_accept"


class InmateGone(Exception):
    """The inmate's channel hung up while the called party was in the announcement or menu."""


class Menu:
    """The called channel's prompts, each preceded by a check that the inmate is still there,
    and whether the recording notice has been heard in full."""

    def __init__(self, s: Session, rec: dict):
        self.s = s
        self.inmate_channel = rec.get("channel", "")
        # an attorney's call, or a line the facility keeps unrecorded, is never recorded: no notice
        self.notice_due = bool(rec.get("recording"))
        self.notice_heard = False
        self.notice_stopped_at: int | None = None  # where a key stopped the notice, until another prompt
        self.announced = False   # the announcement was heard to its end (a language switch then replays the menu)
        self.switches: list[str] = []  # language switches, "en>es"

    def check_inmate(self) -> None:
        if inmate_gone(self.s, self.inmate_channel):
            raise InmateGone(self.inmate_channel)

    def stream(self, sound: str, escape: str = "") -> str:
        self.check_inmate()
        self.notice_stopped_at = None
        return self.s.agi.stream(sound, escape)

    def play(self, key: str, escape: str = "") -> str:
        return self.stream(self.s.sound(key), escape)

    def offer_languages(self, switch: str, escape: str) -> str:
        """'Para español, oprima 8': each other language offered in itself, its key said in it."""
        if not switch:
            return ""
        for lang in prompts.LANGUAGES:
            if lang != self.s.lang:
                digit = (self.stream(prompts.sound("lang-offer", lang), escape)
                         or self.stream(prompts.digit_sound(switch, lang), escape))
                if digit:
                    return digit
        return ""

    def notice(self, escape: str) -> str:
        """The recording notice in the announcement; a key stops it (the key is the choice)."""
        self.check_inmate()
        digit, endpos = self.s.agi.stream_at(self.s.sound("announce-recorded"), escape, 0)
        if digit:
            self.notice_stopped_at = endpos
        else:
            self.notice_heard = True
        return digit

    def finish_notice(self) -> None:
        """Before the bridge: the rest of the notice a key stopped just now (or all of it),
        with no escape digits, so that it is heard in full whatever is pressed."""
        self.check_inmate()
        self.s.agi.stream_at(self.s.sound("announce-recorded"), "", self.notice_stopped_at or 0)
        self.notice_heard = True


def inmate_gone(s: Session, channel: str) -> bool:
    """True once the inmate channel asked to hang up (chan_pjsip sets its hangupsource on the
    BYE) or no longer exists. Read over this AGI session: works with the AMI listener down."""
    if not channel:
        return False
    res = s.agi.execute("GET FULL VARIABLE", "${CHANNEL(hangupsource)}", channel)
    value, data = res["result"]
    return value != "1" or bool(data)


def run(s: Session) -> None:
    call_id = s.args[0] if s.args else ""
    if not CALL_ID_RE.match(call_id):
        raise ValueError(f"called-party menu started without a valid call id: {call_id!r}")
    structlog.contextvars.bind_contextvars(call_id=call_id)
    rec = records.get(s.r, call_id)
    if rec is None:
        raise LookupError(f"no call record {call_id}")
    facility = s.store.facility(rec["facility"])
    s.agi.set_variable(V.GOSUB_RESULT, "ABORT")  # fail closed until the key press says otherwise
    s.set_language(rec.get("called_language") or facility["language"])
    records.update(s.r, call_id, answered_ms=now_ms(), outcome="announcing")
    log.info("callee.announce")

    m = Menu(s, rec)
    try:
        choice = menu(m, facility, rec)
        if choice == "accept":
            records.update(s.r, call_id, outcome="accepted")
            if m.notice_due and not m.notice_heard:  # a key stopped or preceded it: it is heard in full
                m.finish_notice()
            m.play("connecting")
            m.check_inmate()
            if rec.get("recording"):
                start_recording(s, call_id, rec["recording"])
            # the last look before money: an inmate gone by now must never be bridged or charged
            # (a capture of a call never bridged is dropped by ics-recorder)
            if inmate_gone(s, m.inmate_channel):
                if rec.get("recording") and s.cfg["recordings"]["method"] == "mixmonitor":
                    s.agi.execute("EXEC", "StopMixMonitor", "")
                raise InmateGone(m.inmate_channel)
    except InmateGone:
        records.set_reason(s.r, call_id, "inmate_hangup_before_accept")
        records.update(s.r, call_id, outcome="not_accepted")
        log.info("callee.inmate_gone", inmate_channel=m.inmate_channel)
        s.play(INMATE_GONE_PROMPT)
        done(s)
        return
    if choice == "accept":
        # Dial bridges the instant this gosub returns: billing starts here.
        records.update(s.r, call_id, bridged_ms=now_ms())
        # Fail closed on money: without the listener holding the next minute (and
        # pushing this back), the called leg ends a little after the paid minute.
        # A free call holds no minutes: its backstop is the call's limit.
        paid_ms = rating.MINUTE_MS if rec.get("held_cents") else rec.get("limit_s", 0) * 1000
        s.agi.set_variable(V.TIMEOUT, (paid_ms + rating.BACKSTOP_MS) // 1000)
        if rec.get("line") == "courtesy":  # its end tells how to open a prepaid account ([ics-cut])
            s.agi.set_variable(V.COURTESY_END, destination.parse(facility["billing_phone"]).dial)
        s.agi.set_variable(V.GOSUB_RESULT, "")
        done(s)  # after GOSUB_RESULT: a fault before this is never bridged
        log.info("callee.accepted")
        return
    if choice == "refuse":
        records.set_reason(s.r, call_id, "refused")
        log.info("callee.refused")
        s.play("refused")
    elif choice == "block":
        s.store.block(rec["number"], inmate=rec["inmate"])
        records.set_reason(s.r, call_id, "blocked_by_called")
        log.info("callee.blocked")
        s.play("blocked")
    else:
        records.set_reason(s.r, call_id, "no_response")
        log.info("callee.no_response")
        s.play("goodbye")
    records.update(s.r, call_id, outcome="not_accepted")
    done(s)


def done(s: Session) -> None:
    """The menu ended normally: without this, [ics-callee] treats its end as a fault."""
    s.agi.set_variable(V.MENU_DONE, "1")


def announce(m: Menu, facility: dict, rec: dict, escape: str, switch: str = "") -> str:
    # A missing recording must not break the call (Asterisk answers -1 for a
    # missing file): fall back to a generic phrase, checked on disk first.
    # A key pressed early is the choice and ends the announcement; the recording notice is
    # still heard in full before any bridge (run()).
    sounds_dir = m.s.cfg.sounds_dir
    digit = m.offer_languages(switch, escape)
    if digit:
        return digit
    name = prompts.name_sound(rec["inmate"])
    if not prompts.exists(sounds_dir, name):
        name = m.s.sound("announce-unknown-name")
    parts = [m.s.sound("announce-from"), name, m.s.sound("announce-at")]
    if prompts.exists(sounds_dir, prompts.facility_sound(facility["id"])):
        parts.append(prompts.facility_sound(facility["id"]))
    parts.append(m.s.sound("announce-provider"))  # who provides the service (47 CFR 64.710)
    for part in parts:
        digit = m.stream(part, escape)
        if digit:
            return digit
    if rec.get("line") == "courtesy":
        digit = m.play("courtesy-offer", escape)
        if not digit:
            m.s.agi.say_number(rec.get("limit_s", 0) // 60)
            digit = m.play("courtesy-minutes", escape)
        if digit:
            return digit
    digit = m.notice(escape) if m.notice_due else ""
    m.announced = not digit
    return digit


RECORD_OPTIONS = "b"  # MixMonitor: only while bridged, both directions mixed


def start_recording(s: Session, call_id: str, name: str) -> None:
    """Record the called channel: it hears the inmate and speaks for the called party, so
    both legs are mixed. By ics-recorder (recordings.method "capture": this channel's RTP
    addresses, copied from the kernel off Asterisk's path) or by MixMonitor. A recording
    that cannot start stops the call (the gosub still says ABORT): no unrecorded
    non-privileged call is ever bridged."""
    method = s.cfg["recordings"]["method"]
    if method == "capture":
        local = s.agi.get_variable("CHANNEL(rtp,src)")
        remote = s.agi.get_variable("CHANNEL(rtp,dest)")
        if not (local and remote):
            raise RuntimeError(f"no RTP addresses on the called channel ({local!r}, {remote!r}) for {name}")
        recorder.start(s.cfg, call_id, name, local, remote)
    else:
        res = s.agi.execute("EXEC", "MixMonitor", f"{name},{RECORD_OPTIONS}")
        if res["result"][0] != "0":
            raise RuntimeError(f"MixMonitor did not start ({res['result'][0]}) for {name}")
    log.info("callee.recording", file=name, method=method)


def menu(m: Menu, facility: dict, rec: dict) -> str:
    keys = {
        facility["accept_digit"]: "accept",
        facility["refuse_digit"]: "refuse",
        facility["quote_digit"]: "quote",
        facility["block_digit"]: "block",
        facility["info_digit"]: "info",
    }
    # with more than one language, the switch key (never a menu key: ics.config)
    switch = facility["lang_switch_digit"] if len(prompts.LANGUAGES) > 1 else ""
    escape = "".join(keys) + switch
    digit = announce(m, facility, rec, escape, switch)
    misses = quotes = 0
    while True:
        if switch and digit == switch:
            # the announcement or menu again, from its start, in the next language
            switch_language(m, rec)
            digit = announce(m, facility, rec, escape, switch) if not m.announced else ""
            continue
        if not digit:
            digit = offer(m, facility, escape)
        choice = keys.get(digit)
        log.info("callee.key", digit=digit or None, choice=choice)
        digit = ""
        if choice in ("quote", "info") and quotes < MAX_QUOTES:
            quotes += 1
            digit = say_rate(m, rec, escape) if choice == "quote" else say_info(m, facility, escape)
            continue
        if choice in ("accept", "refuse", "block"):
            return choice
        misses += 1
        if misses >= 2:
            return "none"
        m.play("menu-invalid", escape)


def switch_language(m: Menu, rec: dict) -> None:
    """The called party chose another language: everything they hear from now on (the quote,
    warnings, a cut's reason, the reprompt) is in it, and the record says so."""
    was = m.s.lang
    langs = prompts.LANGUAGES
    m.s.set_language(langs[(langs.index(was) + 1) % len(langs)])
    m.notice_stopped_at = None
    m.switches.append(f"{was}>{m.s.lang}")
    records.update(m.s.r, rec["call_id"], called_language=m.s.lang, language_switched=",".join(m.switches))
    log.info("callee.language", was=was, now=m.s.lang)


def offer(m: Menu, facility: dict, escape: str) -> str:
    """The menu once, interruptible, then the facility's timeout for a key."""
    for key, digit_field in (("menu-accept", "accept_digit"), ("menu-refuse", "refuse_digit"),
                             ("menu-quote", "quote_digit"), ("menu-block", "block_digit"),
                             ("menu-info", "info_digit")):
        digit = m.play(key, escape) or m.stream(_digit_sound(facility[digit_field]), escape)
        if digit:
            return digit
    m.check_inmate()
    return m.s.agi.wait_digit(facility["menu_timeout_s"] * 1000)


def say_rate(m: Menu, rec: dict, escape: str) -> str:
    """Read out this call's per-minute price: the rate the inmate flow chose for its
    destination class, or for an international call its country's rate (the one that was
    held and will be billed), through ics.rating. Taxes are added to the bill, so they are
    mentioned only when the call has some."""
    rate, tax_bps = rec.get("rate_cents"), rec.get("tax_bps", 0)
    if not isinstance(rate, int) or not isinstance(tax_bps, int):
        # no rate on the record: nothing truthful can be quoted, so the call must not go on
        raise LookupError(f"call {rec.get('call_id')} has no rate to quote (rate_cents={rate!r})")
    cents = rating.quote(rate).cents
    international = rec.get("dest_class") == "international"
    log.info("callee.quote", cents_per_min=cents, tax_bps=tax_bps, dest_class=rec.get("dest_class"),
             region=rec.get("dest_region"))
    digit = m.play("rate-international" if international else "rate-is", escape)
    dollars, rest = divmod(cents, 100)
    if not digit and dollars:
        m.s.agi.say_number(dollars)
        digit = m.play("rate-dollars", escape) or m.play("rate-and", escape)
    if not digit:
        m.s.agi.say_number(rest)
        digit = m.play("rate-per-minute", escape)
    if not digit and tax_bps > 0:
        digit = m.play("rate-taxes", escape)
    return digit or m.play("rate-whole-minutes", escape)


def say_info(m: Menu, facility: dict, escape: str) -> str:
    """Billing and complaints: the provider's number, digit by digit, and how to hear the rate
    (47 CFR 64.710)."""
    log.info("callee.info")
    digit = m.play("info-billing", escape)
    if not digit:
        m.s.agi.say_digits(destination.parse(facility["billing_phone"]).dial)
        digit = m.play("info-rate", escape) or m.stream(_digit_sound(facility["quote_digit"]), escape)
    return digit


def _digit_sound(d: str) -> str:
    names = {"*": "star", "#": "pound"}
    return f"digits/{names.get(d, d)}"
