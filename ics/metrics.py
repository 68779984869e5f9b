"""Prometheus metrics and the health endpoint of ics-fastagi and ics-ami (prometheus_client).

Each service serves, on its own port (fastagi.metrics_port, ami.metrics_port; bound to
metrics.host, loopback by default; port 0 = not served):

  /metrics   the exposition of the metrics below (and the process's own: CPU, memory, fds)
  /health    200 "ok" when the service can do its work, else 503 with the reason on one line:
             ics-fastagi: Redis answers and it is not draining (a stopping server takes no new calls);
             ics-ami: Redis answers and it is logged in to AMI

A metric a process never touches is still exposed at zero once it is labelled here, so a
scrape shows what exists. Calls are counted once, where they are settled (the FastAGI
hangup handler, or the listener when that could not run): add both services' counters.
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

# latency buckets in seconds: enforcement is milliseconds, call set-up tens of milliseconds
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CALLS = Counter("ics_calls", "Calls settled, by how far they got (outcome) and why they ended (reason)",
                ["outcome", "reason"])
SETUP = Histogram("ics_call_setup_seconds",
                  "Inmate flow: PIN accepted to the dial handed to Asterisk (policy, payer, hold, admission)",
                  buckets=_FAST)
ENFORCEMENT = Histogram("ics_enforcement_seconds",
                        "AMI listener: the time Asterisk stamped on the triggering event (or the rule's "
                        "deadline) to the disconnect action sent", ["reason"], buckets=_FAST)
HOLDS_REFUSED = Counter("ics_holds_refused", "Holds of funds refused: the first minute (inmate flow) "
                        "or a next minute (listener)", ["minute"])
AMI_EVENTS = Counter("ics_ami_events", "AMI events dispatched to the listener's handlers")
AMI_LAG = Histogram("ics_ami_event_lag_seconds",
                    "AMI event time stamped by Asterisk to its dispatch in the listener (backlog)",
                    buckets=_FAST)
AMI_PENDING = Gauge("ics_ami_tasks_pending", "Listener tasks in flight (Redis work, actions, settlements)")
AMI_CONNECTED = Gauge("ics_ami_connected", "1 while the listener is logged in to AMI")
REDIS_ERRORS = Counter("ics_redis_errors", "Redis commands that failed, by error", ["error"])
AGI_SESSIONS = Gauge("ics_agi_sessions", "AGI sessions being served")
AGI_REFUSED = Counter("ics_agi_sessions_refused", "AGI sessions refused, by why", ["why"])
DRAINING = Gauge("ics_fastagi_draining", "1 while the FastAGI server drains (asked to stop)")

for _m in ("first", "next"):
    HOLDS_REFUSED.labels(_m)
for _w in ("draining", "max_sessions"):
    AGI_REFUSED.labels(_w)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # scrapes every few seconds would flood the service's log
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def health_app(check: Callable[[], str | None]):
    """WSGI app: /health runs check (None: healthy, else the reason), anything else is /metrics."""
    metrics = make_wsgi_app()

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/health":
            try:
                problem = check()
            except Exception as exc:  # a check that fails is itself a reason
                problem = f"health check failed: {exc!r}"
            status = "200 OK" if problem is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [("ok" if problem is None else problem).encode() + b"\n"]
        return metrics(environ, start_response)
    return app


class PortTaken(RuntimeError):
    """The metrics port cannot be bound (another service, or a second node on this host has it)."""


def serve(host: str, port: int, check: Callable[[], str | None], key: str = "metrics_port") -> _Server | None:
    """Serve /metrics and /health in a daemon thread; None when port is 0 (not served)."""
    if not port:
        return None
    try:
        server = make_server(host, port, health_app(check), server_class=_Server, handler_class=_Quiet)
    except OSError as exc:
        raise PortTaken(f"cannot serve metrics on {host}:{port} ({key}, metrics.host): {exc.strerror or exc}; "
                        "each service on a host needs its own port or address") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def redis_problem(r) -> str | None:
    try:
        r.ping()
    except Exception as exc:
        return f"redis: {type(exc).__name__}: {exc}"
    return None
