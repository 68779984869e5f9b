"""Redis ACL users, one per service, rendered from ics.keys.WRITES (docker/stack.sh writes them to
the ACL file redis-server loads at set-up, with passwords generated there; none is in the repo).

    ICS_REDIS_PASSWORD_FASTAGI=... ICS_REDIS_PASSWORD_LISTENER=... ICS_REDIS_PASSWORD_RECORDER=...
    ICS_REDIS_PASSWORD_ICSCTL=... \\
    ICS_REDIS_PASSWORD_ADMIN=... python -m ics.redis_acl > users.acl

- default: the administrator (everything) with its own password: a client without credentials
  is refused (NOAUTH). Not "off": Redis 7.0 replays an AOF's MULTI/EXEC as the default user, and
  with that user restricted it drops every transaction on restart (EXEC refused, NOPERM).
- fastagi, listener, recorder, icsctl: read every ics:* key, write only their keys.WRITES (the
  recorder none); commands: reads, writes, transactions and our Lua scripts (EVALSHA, SCRIPT
  LOAD), a cluster client's slot map (CLUSTER SLOTS/SHARDS/NODES, COMMAND, ASKING, READONLY) and
  WAIT, nothing else @dangerous (icsctl alone also RESTORE: icsctl keys migrate)
  (no FLUSHDB, KEYS, CONFIG, DEBUG, SHUTDOWN, ACL, MONITOR) and no pub/sub.
  The admin (default) is for the operator's redis-cli, docker/stack.sh's PING, the tests' flush.
"""

from __future__ import annotations

import os
import re
import sys

from . import keys

SERVICES = ("fastagi", "listener", "recorder", "icsctl")
# (a Redis Cluster client also asks for the slot map and the commands' key positions, follows ASK
# redirections and WAITs for replicas)
COMMANDS = ("-@all +@read +@write +@transaction -@dangerous -@pubsub "
            "+eval +evalsha +script|load +script|exists +ping "
            "+cluster|slots +cluster|shards +cluster|nodes +asking +readonly +wait +command")
# icsctl keys migrate renames keys stored before hash tags with DUMP / RESTORE (on a cluster the old
# and new names live in different slots, so RENAME cannot); RESTORE is @dangerous, and it only ever
# restores a payload icsctl itself just DUMPed from our own keys. Nothing else @dangerous, no one else.
EXTRA = {"icsctl": " +restore"}
_PASSWORD = re.compile(r"^[A-Za-z0-9]{16,}$")


def user_line(name: str, password: str) -> str:
    if not _PASSWORD.match(password):
        raise ValueError(f"the {name} password must be 16+ letters and digits")
    writes = " ".join(f"%RW~{pattern}" for pattern in keys.WRITES[name])
    return f"user {name} on >{password} %R~{keys.READS} {writes} resetchannels {COMMANDS}{EXTRA.get(name, '')}"


def render(passwords: dict[str, str]) -> str:
    if not _PASSWORD.match(passwords["admin"]):
        raise ValueError("the admin password must be 16+ letters and digits")
    lines = [f"user default on >{passwords['admin']} ~* &* +@all"]
    lines += [user_line(name, passwords[name]) for name in SERVICES]
    return "\n".join(lines) + "\n"


def main() -> int:
    try:
        passwords = {name: os.environ[f"ICS_REDIS_PASSWORD_{name.upper()}"] for name in (*SERVICES, "admin")}
        sys.stdout.write(render(passwords))
    except (KeyError, ValueError) as exc:
        print(f"redis_acl: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
