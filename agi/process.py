"""Process AGI entry: the same flows over stdin/stdout.

    exten => ...,AGI(/path/to/.venv/bin/ics-agi,inmate)

The first argument names the route (as the FastAGI path does); the rest are
the flow's arguments. Logs go to stderr: stdout is the AGI channel.
"""

from __future__ import annotations

import sys

import structlog

from ics import config as config_mod
from ics import logs
from ics.store import Store, connect

from . import session
from .flows import ROUTES
from .protocol import ProtocolError, SafeAGI


def main() -> int:
    logs.setup("json", "info", stream=sys.stderr)
    log = structlog.get_logger("agi")
    try:
        cfg = config_mod.load()
        agi = SafeAGI(sys.stdin.buffer, sys.stdout.buffer)
    except (config_mod.ConfigError, ProtocolError) as exc:
        log.error("service.config_error", error=str(exc))
        return 1
    args = session.agi_args(agi.env)
    if not args:
        log.error("agi.session.error", why="no route: call as AGI(ics-agi,<route>,...)")
        return 1
    route = args[0]
    # the flow's own arguments follow the route
    shifted = {k: v for k, v in agi.env.items() if not k.startswith("agi_arg_")}
    for i, a in enumerate(args[1:], 1):
        shifted[f"agi_arg_{i}"] = a
    agi.env = shifted
    session.run(agi, route, ROUTES, Store(connect(cfg), cfg), cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
