"""Test support: the lab stack's environment, pjsua2 phones, an AMI tap, call-flow steps."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stack_dir() -> Path:
    return Path(os.environ.get("ICS_STACK_DIR") or REPO / ".stack")


def read_stack_env(path: Path | None = None) -> dict[str, str]:
    """KEY=value lines of .stack/stack.env (written by docker/stack.sh), or {} if absent."""
    path = path or stack_dir() / "stack.env"
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        parts = shlex.split(raw) if raw else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def load_stack_env(path: Path | None = None, override: bool = False) -> dict[str, str]:
    """Put stack.env into os.environ (existing variables win unless override)."""
    values = read_stack_env(path)
    for key, value in values.items():
        if override or key not in os.environ:
            os.environ[key] = value
    return values


def stack_setting(name: str, default: str | None = None) -> str | None:
    """An ICS_* value from the environment, else from stack.env, else default."""
    if name in os.environ:
        return os.environ[name]
    return read_stack_env().get(name, default)


def seed_week(store, iid: str, week: str, calls: int, minutes: int) -> None:
    """An inmate's weekly quota usage as settlement would have counted it (tests only)."""
    from ics import keys
    store.r.hset(keys.inmate_week(iid, week), mapping={"calls": calls, "minutes": minutes})


def admin_redis(stack: dict | None = None):
    """The lab Redis as its admin ACL user (docker/stack.sh: ICS_STACK_REDIS_ADMIN_URL, one URL or
    the cluster's nodes; over TLS with ICS_REDIS_TLS_CA): what only a test may do, such as flushing the database. The services and
    icsctl have their own users."""
    from ics import config
    from ics.store import connect
    get = (lambda k: stack.get(k)) if stack is not None else stack_setting
    url = get("ICS_STACK_REDIS_ADMIN_URL") or get("ICS_REDIS_URL")
    return connect(config.load(environ={"ICS_REDIS_URL": url, "ICS_REDIS_CLUSTER": get("ICS_REDIS_CLUSTER") or "false",
                                        "ICS_REDIS_TLS_CA": get("ICS_REDIS_TLS_CA") or "",
                                        "ICS_REDIS_TIMEOUT_MS": "5000"}))
