"""Call nodes that died with calls on them (a cluster: README, Cluster).

Each node's AMI listener enforces only its own Asterisk's calls, so when a whole node
dies (Asterisk, FastAGI and listener together) nobody is left to settle its calls. Every
listener therefore also watches its peers: a node is dead when its heartbeat
(keys.listener_alive) has expired AND its AMI port does not answer (refused or silent).
A node whose listener alone is down still answers on AMI: its calls go on, ended by the
called leg's TIMEOUT backstop after their paid minutes, and its own listener settles
them when it is back, as on a single box.

The first live peer to see a node dead takes keys.node_sweep (NX, with expiry) and
records each of that node's unsettled calls as a system drop (system_error, threshold
node_down=<node>, the NodeDown evidence: last heartbeat, the AMI probe), dated by the
node's last heartbeat, then settles it through the listener's own system-drop path
(credited per the rule, once: settlement is idempotent, so the dead node's listener
coming back and doing the same for a call changes nothing). A call that had already
ended (ended_ms) is settled as it ended, not as a drop. A dead node with nothing left to
settle leaves keys.NODES (its heartbeat puts it back).

Left: a node whose listener alone is down keeps answering Kamailio's pings, so new calls
still reach it and are refused there (system_unavailable, fail closed) until the listener
is back; a node cut off from the network with its Asterisk alive is taken for dead: its
calls are credited as drops while they run on to their paid minutes' backstop.
"""

from __future__ import annotations

import asyncio

from ics import keys, records

PEER_CHECK_S = 1.0          # how often a listener looks for dead peers
AMI_PROBE_S = 1.0           # a node's AMI that neither answers nor refuses within this is dead
SWEEP_HOLD_MS = 10_000      # one peer at a time settles a dead node's calls
SCAN = 500                  # most recent call records looked at


def silent(r, me: str) -> dict[str, dict]:
    """Nodes other than me whose heartbeat has expired: node -> its keys.node hash."""
    out = {}
    for nid in sorted(r.smembers(keys.NODES)):
        if nid != me and not r.exists(keys.listener_alive(nid)):
            out[nid] = r.hgetall(keys.node(nid))
    return out


async def ami_probe(host: str, port: int) -> str | None:
    """None when the node's AMI answers with its banner, else why not (the evidence)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), AMI_PROBE_S)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"connect {host}:{port}: {exc!r}"
    try:
        banner = await asyncio.wait_for(reader.readline(), AMI_PROBE_S)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"no banner from {host}:{port}: {exc!r}"
    finally:
        writer.close()
    return None if banner.startswith(b"Asterisk Call Manager") else f"no banner from {host}:{port}: {banner!r}"


def claim(r, nid: str, me: str) -> bool:
    return bool(r.set(keys.node_sweep(nid), me, nx=True, px=SWEEP_HOLD_MS))


def unsettled_calls(r, nid: str) -> list[dict]:
    """The node's recent call records not settled yet."""
    return [rec for rec in records.recent(r, SCAN) if rec.get("node") == nid and rec.get("settled") != "1"]


def evidence(nid: str, info: dict, why: str, rec: dict) -> dict:
    return {"event": "NodeDown", "time": f"{int(info.get('beat_ms') or 0) / 1000:.3f}",
            "channel": rec.get("channel", ""), "node": nid, "last_heartbeat_ms": str(info.get("beat_ms", "")),
            "ami": why}
