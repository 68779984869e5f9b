"""FastAGI server: a thin threaded TCP server that hands each session to its flow.

    ics-fastagi            (config: [fastagi] host/port, default 127.0.0.1:4573)

One thread per AGI session keeps the call flows plain synchronous code shared
with process AGI; Redis calls are short and the connection pool is thread-safe.
Start-up fails, rather than a call, when the config is invalid, Redis is
unreachable, a prompt file is missing or Asterisk's RTP port range (capacity.rtp_conf)
cannot carry capacity.max_calls.

Asked to stop (SIGTERM) it drains, as uvicorn does: a new call (the inmate route) is
refused at once (the inmate hears the system-error prompt in [ics-fail]) while every
session of a call it already serves (the menu, after-dial, the hangup handler's settle)
is still taken, until each such call has settled here or fastagi.drain_timeout_s has
passed; /health says 503 meanwhile. SIGINT stops at once. Metrics and /health:
ics.metrics, on fastagi.metrics_port.
"""

from __future__ import annotations

import signal
import socketserver
import sys
import threading
import time

import structlog

from ics import config as config_mod
from ics import logs, metrics, prompts, records
from ics.store import Store, connect

from . import session
from .flows import ROUTES
from .protocol import ProtocolError, SafeAGI

log = structlog.get_logger("agi")


NEW_CALL_ROUTE = "inmate"   # the route that starts a call: refused while draining
DRAIN_CHECK_S = 1.0         # while draining, calls settled elsewhere are looked for this often
DRAIN_RECENT_CALLS = 1000   # ... among this many most recent call records
SETTLE_ROUTE = "settle"     # the hangup handler's route: the call is over once it ran


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        srv: FastAGIServer = self.server  # type: ignore[assignment]
        if not srv.slots.acquire(blocking=False):
            metrics.AGI_REFUSED.labels("max_sessions").inc()
            log.error("agi.session.error", why="too many concurrent sessions; refusing")
            return
        srv.opened(1)
        route, uniqueid = "", ""
        try:
            try:
                agi = SafeAGI(self.rfile, self.wfile)
            except ProtocolError as exc:
                log.error("agi.protocol_error", error=str(exc), peer=self.client_address[0])
                return
            route = agi.env.get("agi_network_script", "").strip("/").split("?")[0]
            uniqueid = agi.env.get("agi_uniqueid", "")
            if route == NEW_CALL_ROUTE and not srv.admit(uniqueid):
                metrics.AGI_REFUSED.labels("draining").inc()
                log.warning("agi.session.refused", why="draining", route=route, uniqueid=uniqueid)
                session.refuse(agi)
                return
            session.run(agi, route, ROUTES, srv.store, srv.cfg)
        finally:
            if route == SETTLE_ROUTE:
                srv.settled(uniqueid)
            srv.opened(-1)
            srv.slots.release()


class FastAGIServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, cfg: config_mod.Config, store: Store):
        self.cfg = cfg
        self.store = store
        self.slots = threading.BoundedSemaphore(cfg["fastagi"]["max_sessions"])
        self.draining = False
        self._lock = threading.Lock()
        # calls this server started and has not settled: inmate channel uniqueid -> monotonic start
        self._calls: dict[str, float] = {}
        self._sessions = 0
        super().__init__((cfg["fastagi"]["host"], cfg["fastagi"]["port"]), _Handler)

    def admit(self, uniqueid: str) -> bool:
        """A new call: False while draining. Calls older than the drain timeout (their settle went
        elsewhere: a crash, the listener) are forgotten so none waits forever."""
        with self._lock:
            if self.draining:
                return False
            now = time.monotonic()
            oldest = now - self.cfg["fastagi"]["drain_timeout_s"]
            for uid in [u for u, t in self._calls.items() if t < oldest]:
                del self._calls[uid]
            self._calls[uniqueid] = now
            return True

    def opened(self, n: int) -> None:
        with self._lock:
            self._sessions += n
        metrics.AGI_SESSIONS.inc(n)

    def settled(self, uniqueid: str) -> None:
        with self._lock:
            self._calls.pop(uniqueid, None)

    def serving(self) -> tuple[int, int]:
        """(calls started here not yet settled, AGI sessions open)."""
        with self._lock:
            return len(self._calls), self._sessions

    def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, wait for the ones served to settle (at most timeout_s). True if all did."""
        with self._lock:
            self.draining = True
        metrics.DRAINING.set(1)
        calls, sessions = self.serving()
        log.info("service.draining", calls=calls, sessions=sessions, timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        checked = 0.0
        while any(self.serving()):
            if time.monotonic() > deadline:
                calls, sessions = self.serving()
                log.warning("service.drain_timeout", calls=calls, sessions=sessions, timeout_s=timeout_s)
                return False
            if time.monotonic() - checked >= DRAIN_CHECK_S:
                checked = time.monotonic()
                self.forget_finished()
            time.sleep(0.1)
        log.info("service.drained")
        return True

    def forget_finished(self) -> None:
        """Calls whose hangup handler never reached this server (Asterisk restarted, the listener
        settled them) are over once their record is settled; one without a record a while after
        its start never got past the flow's first step. Redis away: keep waiting."""
        with self._lock:
            tracked = dict(self._calls)
        if not tracked:
            return
        try:
            recs = {rec.get("uniqueid"): rec for rec in records.recent(self.store.r, DRAIN_RECENT_CALLS)}
        except Exception as exc:
            log.warning("service.drain_check_failed", error=repr(exc))
            return
        now = time.monotonic()
        done = [u for u, started in tracked.items()
                if (u in recs and recs[u].get("settled") == "1") or (u not in recs and now - started > 10)]
        with self._lock:
            for uid in done:
                self._calls.pop(uid, None)

    def health(self) -> str | None:
        if self.draining:
            calls, sessions = self.serving()
            return f"draining: {calls} call(s), {sessions} session(s) left"
        return metrics.redis_problem(self.store.r)


def preflight(cfg: config_mod.Config, store: Store) -> list[str]:
    """What would make calls fail: returned as messages, empty when ready."""
    problems = []
    try:
        store.r.ping()
    except Exception as exc:
        problems.append(f"Redis at {cfg['redis']['url']} is unreachable: {exc}")
    try:  # a call past the RTP range would get no media port: refuse to start instead
        config_mod.check_rtp_range(cfg["capacity"]["rtp_conf"], cfg["capacity"]["max_calls"])
    except config_mod.ConfigError as exc:
        problems.append(str(exc))
    missing = prompts.missing(cfg.sounds_dir)
    if missing:
        problems.append(f"{len(missing)} prompt(s) missing under {cfg.sounds_dir}/prompts: "
                        f"{', '.join(missing[:8])} (run prompts/generate.py)")
    return problems


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        logs.setup()
        log.error("service.config_error", error=str(exc))
        return 2
    logs.setup(cfg["log"]["format"], cfg["log"]["level"])
    store = Store(connect(cfg), cfg)
    problems = preflight(cfg, store)
    if problems:
        for p in problems:
            log.error("service.prompts_missing" if "prompt" in p else "service.config_error", error=p)
        return 1
    # keys named before hash tags would be found nowhere (no account, no inmate): place no call on
    # them. Renaming them takes RESTORE and the old names, which only icsctl's Redis user may use.
    untagged = store.untagged_keys()
    if untagged:
        log.error("keys.migration_needed", count=len(untagged), examples=untagged[:5],
                  fix="run: icsctl keys migrate")
        return 1
    # numbers stored before E.164 would be found nowhere (not approved, no account): rewrite them first
    moved = store.migrate_numbers()
    if moved["migrated"] or moved["kept_existing"]:
        log.info("numbers.migrated", migrated=len(moved["migrated"]), kept_existing=len(moved["kept_existing"]))
    if moved["unreadable"]:
        log.warning("numbers.unreadable", numbers=moved["unreadable"][:20], count=len(moved["unreadable"]))
    server = FastAGIServer(cfg, store)
    stop = threading.Event()
    how = {"drain": True}

    def on_signal(signum, _frame):
        how["drain"] = how["drain"] and signum == signal.SIGTERM  # SIGINT, or a second signal: at once
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        metrics.serve(cfg["metrics"]["host"], cfg["fastagi"]["metrics_port"], server.health, "fastagi.metrics_port")
    except metrics.PortTaken as exc:
        log.error("service.config_error", error=str(exc))
        server.server_close()
        return 2
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="accept",
                     daemon=True).start()
    log.info("service.start", service="fastagi", host=cfg["fastagi"]["host"],
             port=cfg["fastagi"]["port"], metrics_port=cfg["fastagi"]["metrics_port"], config=list(cfg.sources))
    while not stop.wait(0.5):
        pass
    if how["drain"]:
        stop.clear()  # a second signal while draining: stop at once
        waiter = threading.Thread(target=server.drain, args=(cfg["fastagi"]["drain_timeout_s"],), daemon=True)
        waiter.start()
        while waiter.is_alive() and not stop.wait(0.2):
            pass
    server.shutdown()
    server.server_close()
    log.info("service.stop", service="fastagi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
