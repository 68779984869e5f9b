"""What every store module shares: the error type, the clock, numbers, ids, the Redis
connection and the Lua script loader."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any, Sequence

import redis
import structlog
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.connection import parse_url

from .. import destination, metrics
from ..config import Config, redis_urls
from ..destination import Destination, NumberError

log = structlog.get_logger("ics")
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


class _Counted:
    """Counts failed commands (ics_redis_errors_total). A script missing from the cache
    (NOSCRIPT: redis-py loads it and retries) is no failure."""

    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)
        except redis.exceptions.NoScriptError:
            raise
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
            raise


class CountedRedis(_Counted, redis.Redis):
    pass


class CountedRedisCluster(_Counted, RedisCluster):
    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)
        except RedisClusterException as exc:
            # no node reachable: redis-py raises this outside RedisError; callers fail closed on
            # ConnectionError as with a single Redis
            metrics.REDIS_ERRORS.labels("ConnectionError").inc()
            raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc


def connect(cfg: Config) -> redis.Redis:
    """The service's Redis client, as its own ACL user (redis.username / password) when set, over
    TLS for rediss:// urls (redis.tls_ca). A RedisCluster client when redis.cluster is set or
    redis.url lists several nodes (any of them will do: the client learns the others from them)."""
    c = cfg["redis"]
    timeout = c["timeout_ms"] / 1000
    opts: dict[str, Any] = dict(decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout)
    if c["username"] or c["password"]:
        opts.update(username=c["username"] or None, password=c["password"] or None)
    urls = redis_urls(c["url"])
    tls = urls[0].startswith("rediss://")
    if tls:
        opts.update(ssl_cert_reqs="required", ssl_ca_certs=c["tls_ca"] or None)
    if c["cluster"] or len(urls) > 1:
        given = [parse_url(u) for u in urls]
        nodes = [ClusterNode(g["host"], g.get("port", 6379)) for g in given]
        for k in ("username", "password"):
            if given[0].get(k) and k not in opts:
                opts[k] = given[0][k]
        try:  # (a cluster client asks the nodes for the slot map at once)
            return CountedRedisCluster(startup_nodes=nodes, ssl=tls, **opts)
        except RedisClusterException as exc:
            raise redis.ConnectionError(f"Redis Cluster at {', '.join(g['host'] + ':' + str(g.get('port', 6379)) for g in given)}: {exc}") from None
    return CountedRedis.from_url(urls[0], **opts)


def as_entries(raw: list) -> list[tuple[str, dict[str, str]]]:
    """Stream entries (XRANGE) as (id, fields), also as a cluster MULTI returns them (redis-py's
    cluster transactions leave XRANGE and SMEMBERS replies raw: flat field lists, lists)."""
    return [(eid, f if isinstance(f, dict) else dict(zip(f[::2], f[1::2]))) for eid, f in raw]


# Every script run goes through Lua.__call__ with the keys it touches: a test wraps it to check
# that each one's KEYS hash to one slot (tests/unit/test_key_slots.py).
class Lua:
    """One script from lua/*.lua (files joined in order: a shared function, then the script),
    read once; redis-py's Script sends EVALSHA and loads it again on NOSCRIPT (a restarted or
    failed-over node has an empty script cache).

    wait = (replicas, timeout_ms): after the script, WAIT on the same connection of the node
    that ran it until that many replicas have the write (redis.wait_replicas, money scripts)."""

    def __init__(self, r: redis.Redis, *files: str, wait: tuple[int, int] = (0, 0)):
        self.name = files[-1].removesuffix(".lua")
        self.r = r
        self.script = r.register_script(_source(files))
        self.wait = wait

    def __call__(self, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        if not self.wait[0]:
            return self.script(keys=list(keys), args=list(args))
        node = self.r
        if isinstance(self.r, RedisCluster):  # the master of the script's one slot
            node = self.r.get_redis_connection(self.r.get_node_from_key(keys[0]))
        with node.pipeline(transaction=False) as p:  # one connection: WAIT counts this write
            self.script(keys=list(keys), args=list(args), client=p)
            p.wait(*self.wait)
            result, acked = p.execute()
        if acked < self.wait[0]:
            log.warning("redis.wait_short", script=self.name, replicas=acked, wanted=self.wait[0],
                        timeout_ms=self.wait[1])
        return result


@functools.cache
def _source(files: tuple[str, ...]) -> str:
    return "\n".join((LUA_DIR / f).read_text() for f in files)


class Base:
    """A store module: the client, the configuration and its scripts (LUA: attribute ->
    file or files, each module's own, loaded once per client)."""

    LUA: dict[str, str | tuple[str, ...]] = {}
    WAIT_FOR_REPLICAS = False  # money: its scripts WAIT for redis.wait_replicas replicas

    def __init__(self, r: redis.Redis, cfg: Config):
        self.r = r
        self.cfg = cfg
        waits = (cfg["redis"]["wait_replicas"], cfg["redis"]["wait_timeout_ms"])
        for cls in type(self).__mro__:
            wait = waits if vars(cls).get("WAIT_FOR_REPLICAS") else (0, 0)
            for attr, files in vars(cls).get("LUA", {}).items():
                setattr(self, attr, Lua(r, *((files,) if isinstance(files, str) else files), wait=wait))

    def legacy_keys(self, prefix: str) -> dict[str, list[str]]:
        """Keys named before hash tags (prefix<id>[:rest], no "{"): id -> those keys."""
        found: dict[str, list[str]] = {}
        for key in self.r.scan_iter(match=prefix + "*", count=500):
            if "{" not in key:
                found.setdefault(key[len(prefix):].split(":", 1)[0], []).append(key)
        return found

    def copy_plain_key(self, old: str, new: str) -> None:
        """Copy a string or hash key to a name in another slot with SET / HSET and its expiry:
        what ics-fastagi's Redis user may do (RESTORE is @dangerous, icsctl's alone). Number keys
        (keys.NUMBER_KEY_PREFIXES) are strings and hashes only."""
        kind, ttl = self.r.type(old), self.r.pttl(old)
        if kind == "string":
            self.r.set(new, self.r.get(old), px=ttl if ttl > 0 else None)
        elif kind == "hash":
            with self.r.pipeline(transaction=True) as p:  # one key, one slot
                p.hset(new, mapping=self.r.hgetall(old))
                if ttl > 0:
                    p.pexpire(new, ttl)
                p.execute()
        else:
            raise StoreError(f"{old} is a {kind}: only string and hash number keys are renamed")

    def move_key(self, old: str, new: str, done: dict[str, list[str]]) -> None:
        """Give a key its hash-tagged name (DUMP / RESTORE: on a cluster the two names are in
        different slots), keeping its expiry; a key already there under the new name wins."""
        if self.r.exists(new):
            done["kept_existing"].append(f"{old} -> {new}")
        else:
            ttl = self.r.pttl(old)
            self.r.restore(new, max(ttl, 0), self.r.dump(old))
            done["migrated"].append(f"{old} -> {new}")
        self.r.delete(old)
