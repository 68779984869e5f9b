"""What every store module shares: the error type, the clock, numbers, ids, the Redis
connection and the Lua script loader."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any, Sequence

import redis
from redis.cluster import RedisCluster

from .. import destination
from ..config import Config
from ..destination import Destination, NumberError

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
LUA_DIR = Path(__file__).with_name("lua")


class StoreError(ValueError):
    """Bad input to a store operation: the message is for a human."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dest(number: Destination | str) -> Destination:
    """A number given as a Destination or as typed (parsed here, once): every number the
    store keeps is a Destination's E.164, so one number has one spelling in Redis."""
    if isinstance(number, Destination):
        return number
    try:
        d = destination.parse(number)
    except NumberError as exc:
        raise StoreError(f"invalid number: {exc}") from None
    if d.short:
        raise StoreError(f"invalid number: {d.e164} is a short code ({d.kind.replace('_', ' ')}), "
                         "not a phone number")
    return d


def stored(number: Destination | str) -> str | None:
    """The stored spelling to look a number up by; None for text that is no number (found nowhere)."""
    try:
        return dest(number).e164
    except StoreError:
        return None


def check_id(kind: str, value: str, pattern: re.Pattern = ID_RE) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise StoreError(f"invalid {kind} {value!r}")
    return value


def one_line(kind: str, value: str) -> str:
    """A name or note: non-empty, one line, no NUL."""
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\r\n\0"):
        raise StoreError(f"{kind} must be non-empty, one line")
    return value


def connect(cfg: Config) -> redis.Redis:
    """A Redis client, or a RedisCluster client when redis.cluster is set (redis.url is then
    any one node of the cluster: the client learns the others from it)."""
    timeout = cfg["redis"]["timeout_ms"] / 1000
    opts: dict[str, Any] = dict(decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout)
    if cfg["redis"].get("cluster"):
        return RedisCluster.from_url(cfg["redis"]["url"], **opts)
    return redis.Redis.from_url(cfg["redis"]["url"], **opts)


# Every script run goes through Lua.__call__ with the keys it touches: a test wraps it to check
# that each one's KEYS hash to one slot (tests/unit/test_key_slots.py).
class Lua:
    """One script from lua/*.lua (files joined in order: a shared function, then the script),
    read once; redis-py's Script sends EVALSHA and loads it again on NOSCRIPT (a restarted or
    failed-over node has an empty script cache)."""

    def __init__(self, r: redis.Redis, *files: str):
        self.name = files[-1].removesuffix(".lua")
        self.script = r.register_script(_source(files))

    def __call__(self, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        return self.script(keys=list(keys), args=list(args))


@functools.cache
def _source(files: tuple[str, ...]) -> str:
    return "\n".join((LUA_DIR / f).read_text() for f in files)


class Base:
    """A store module: the client, the configuration and its scripts (LUA: attribute ->
    file or files, each module's own, loaded once per client)."""

    LUA: dict[str, str | tuple[str, ...]] = {}

    def __init__(self, r: redis.Redis, cfg: Config):
        self.r = r
        self.cfg = cfg
        for cls in type(self).__mro__:
            for attr, files in vars(cls).get("LUA", {}).items():
                setattr(self, attr, Lua(r, *((files,) if isinstance(files, str) else files)))
