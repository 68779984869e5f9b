"""One AGI session: what every flow handler gets, and the dispatch that runs it.

A handler is a plain function `run(s: Session) -> None`, chosen by the AGI
request path (agi://127.0.0.1:4573/<route>). A hang-up is a normal end of a
handler (ChannelGone), not an error. Any other exception is logged with its
traceback and the channel is sent to the one fail context, which plays a
prompt and hangs up; settlement still runs from the hangup handler. Not on the
callee route: that channel is in Dial's U() gosub, whose own fault branch ([ics-callee]:
no ICS_MENU_DONE) tells both parties (a Goto out of the gosub would abort both legs,
the inmate's unheard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import structlog

from ics import prompts
from ics.config import Config
from ics.store import Store

from .channelvars import PROMPTS as PROMPTS_VAR
from .protocol import ChannelGone, SafeAGI

FAIL_CONTEXT = "ics-fail"
GOSUB_ROUTES = {"callee"}  # routes run inside a gosub that handles its own faults (no ics-fail)
log = structlog.get_logger("agi")


@dataclass
class Session:
    agi: SafeAGI
    store: Store
    cfg: Config
    args: list[str] = field(default_factory=list)
    lang: str = prompts.DEFAULT_LANGUAGE  # the language this channel's prompts are played in

    @property
    def r(self):
        return self.store.r

    @property
    def env(self) -> dict[str, str]:
        return self.agi.env

    def play(self, key: str, escape: str = "") -> str:
        return self.agi.stream(prompts.sound(key, self.lang), escape)

    def sound(self, key: str) -> str:
        return prompts.sound(key, self.lang)

    def set_language(self, lang: str) -> None:
        """This channel's language from now on: our prompts (s.play), the dialplan's ([ics-cut],
        [ics-fail]: ICS_PROMPTS) and Asterisk's own SayNumber and digits (CHANNEL(language))."""
        self.lang = prompts.language(lang)
        self.agi.set_variable(PROMPTS_VAR, prompts.prompts_dir(self.lang))
        self.agi.set_variable("CHANNEL(language)", self.lang)

    def send_to_fail(self) -> None:
        refuse(self.agi)


def refuse(agi: SafeAGI) -> None:
    """Send the channel to the one fail context (it hears the system-error prompt and is hung up):
    a flow error, or a new call a draining server does not take."""
    try:
        agi.execute("SET CONTEXT", FAIL_CONTEXT)
        agi.execute("SET EXTENSION", "s")
        agi.execute("SET PRIORITY", "1")
    except ChannelGone:
        pass


Handler = Callable[[Session], None]


def agi_args(env: dict[str, str]) -> list[str]:
    out, n = [], 1
    while f"agi_arg_{n}" in env:
        out.append(env[f"agi_arg_{n}"])
        n += 1
    return out


def run(agi: SafeAGI, route: str, routes: dict[str, Handler], store: Store, cfg: Config) -> str:
    """Run one session to its end; returns how it ended: ok, hangup or error."""
    started = time.perf_counter()
    channel = agi.env.get("agi_channel", "?")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(route=route, channel=channel,
                                           uniqueid=agi.env.get("agi_uniqueid", ""))
    log.debug("agi.session.start")
    session = Session(agi=agi, store=store, cfg=cfg, args=agi_args(agi.env))
    outcome = "ok"
    try:
        handler = routes.get(route)
        if handler is None:
            raise LookupError(f"no AGI route {route!r}")
        handler(session)
    except ChannelGone:
        outcome = "hangup"
    except Exception:
        outcome = "error"
        log.exception("agi.session.error")
        try:
            if route not in GOSUB_ROUTES:
                session.send_to_fail()
        except Exception:
            pass  # the channel is already gone: settlement still runs from its hangup handler
    log.info("agi.session.end", outcome=outcome,
             ms=round((time.perf_counter() - started) * 1000, 2))
    structlog.contextvars.clear_contextvars()
    return outcome
