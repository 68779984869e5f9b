"""FastAGI server: a thin threaded TCP server that hands each session to its flow.

    ics-fastagi            (config: [fastagi] host/port, default 127.0.0.1:4573)

One thread per AGI session keeps the call flows plain synchronous code shared
with process AGI; Redis calls are short and the connection pool is thread-safe.
Start-up fails, rather than a call, when the config is invalid, Redis is
unreachable, a prompt file is missing or Asterisk's RTP port range (capacity.rtp_conf)
cannot carry capacity.max_calls.
"""

from __future__ import annotations

import signal
import socketserver
import sys
import threading

import structlog

from ics import config as config_mod
from ics import logs, prompts
from ics.store import Store, connect

from . import session
from .flows import ROUTES
from .protocol import ProtocolError, SafeAGI

log = structlog.get_logger("agi")


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        srv: FastAGIServer = self.server  # type: ignore[assignment]
        if not srv.slots.acquire(blocking=False):
            log.error("agi.session.error", why="too many concurrent sessions; refusing")
            return
        try:
            try:
                agi = SafeAGI(self.rfile, self.wfile)
            except ProtocolError as exc:
                log.error("agi.protocol_error", error=str(exc), peer=self.client_address[0])
                return
            route = agi.env.get("agi_network_script", "").strip("/").split("?")[0]
            session.run(agi, route, ROUTES, srv.store, srv.cfg)
        finally:
            srv.slots.release()


class FastAGIServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, cfg: config_mod.Config, store: Store):
        self.cfg = cfg
        self.store = store
        self.slots = threading.BoundedSemaphore(cfg["fastagi"]["max_sessions"])
        super().__init__((cfg["fastagi"]["host"], cfg["fastagi"]["port"]), _Handler)


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
    # keys named before hash tags (one slot per script) would be found nowhere: rename them first
    renamed = store.migrate_keys()
    if renamed["migrated"] or renamed["kept_existing"]:
        log.info("keys.migrated", migrated=len(renamed["migrated"]), kept_existing=len(renamed["kept_existing"]))
    if renamed["refused"]:
        log.error("keys.migrate_refused", refused=renamed["refused"][:20], count=len(renamed["refused"]))
    # numbers stored before E.164 would be found nowhere (not approved, no account): rewrite them first
    moved = store.migrate_numbers()
    if moved["migrated"] or moved["kept_existing"]:
        log.info("numbers.migrated", migrated=len(moved["migrated"]), kept_existing=len(moved["kept_existing"]))
    if moved["unreadable"]:
        log.warning("numbers.unreadable", numbers=moved["unreadable"][:20], count=len(moved["unreadable"]))
    server = FastAGIServer(cfg, store)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info("service.start", service="fastagi", host=cfg["fastagi"]["host"],
             port=cfg["fastagi"]["port"], config=list(cfg.sources))
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    server.server_close()
    log.info("service.stop", service="fastagi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
