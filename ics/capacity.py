"""Admission control (issue 9): no new inmate call once capacity.max_calls calls are live.

Past its clean ceiling the box degrades every call at once (jitter, late speech) and
MixMonitor recordings silently come out short, so a call over the limit is refused
(`capacity_full`, the busy prompt) instead of being placed.

Who counts (ics.keys):
  live       keys.LIVE_CALLS: the inmate calls the AMI listener sees placed (the called leg
             exists: ringing, announcement, bridged, a closing prompt), written with its
             heartbeat, same expiry. A call still in the inmate's menu (PIN, choices) is
             not counted: it costs one channel and no recording, and a call cannot count
             itself before it asks.
  setting_up keys.CALLS_SETTING_UP: calls the flow admitted (the last check, just before it
             dials) that the listener does not count yet. Without them a burst of calls
             finishing their PIN within one heartbeat would all read the same count and all
             be placed. The listener drops an entry in the same transaction that first counts
             its call (never counted twice), or once its inmate channel is gone (hung up
             before the dial); any entry older than SETTING_UP_MAX_MS is dropped by the check.
  Left: an entry the listener could not see within SETTING_UP_MAX_MS (its AMI events far
  behind) stops counting until the listener counts the call; the RTP range keeps 2x
  headroom (ics.config.RTP_HEADROOM) for such overshoot.

The check and the admission are one Lua script (atomic: two flows admitted at the same
instant see each other). The count missing (the listener down) reads as "unknown": the
flow's listener check refuses such a call (system_unavailable); Redis away raises.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import redis

from . import keys
from .store import Lua, now_ms

SETTING_UP_MAX_MS = 20_000  # admitted, never seen placed: dropped after this (the dial takes ~3 s)
GONE_GRACE_MS = 2_000       # an admitted call whose inmate channel the listener does not know



@dataclass(frozen=True)
class Load:
    """What the check saw. room is None when there is no count (the listener is away)."""
    room: bool | None
    live: int
    setting_up: int

    @property
    def calls(self) -> int:
        return self.live + self.setting_up


def check(r: redis.Redis, max_calls: int, admit: str = "", node: str = keys.DEFAULT_NODE) -> Load:
    """Is there room for one more call under max_calls on this node? With admit (the inmate
    channel's Uniqueid, the Linkedid the listener keys the call by), the call is admitted in the
    same step: it counts from now on (setting up, then live)."""
    now = now_ms()
    decision, live, pending = Lua(r, "admit.lua")(
        keys=[keys.live_calls(node), keys.calls_setting_up(node)],
        args=[now, max_calls, admit, now - SETTING_UP_MAX_MS])
    return Load(None if decision == -1 else bool(decision), int(live), int(pending))


def setting_up(r: redis.Redis, node: str = keys.DEFAULT_NODE) -> dict[str, int]:
    """The calls admitted and not yet counted by the listener: member -> admitted ms."""
    return {m: int(score) for m, score in r.zrange(keys.calls_setting_up(node), 0, -1, withscores=True)}


def beat(r: redis.Redis, live: Collection[str], known: Collection[str], admitted: dict[str, int],
         now: int | None = None, node: str = keys.DEFAULT_NODE, where: dict | None = None) -> None:
    """The AMI listener's heartbeat (keys.LISTENER_ALIVE) and its live count (keys.LIVE_CALLS),
    one transaction: live are the Linkedids of the calls placed now, known every Linkedid it
    has, admitted what setting_up() returned before, where its AMI address (keys.node). Entries now counted live, or whose inmate
    channel is gone, stop counting as setting up in the same step."""
    now = now_ms() if now is None else now
    done = [m for m, at in admitted.items() if m in live or (m not in known and now - at > GONE_GRACE_MS)]
    with r.pipeline(transaction=True) as p:
        p.set(keys.listener_alive(node), now, px=keys.LISTENER_ALIVE_MS)
        p.set(keys.live_calls(node), len(live), px=keys.LISTENER_ALIVE_MS)
        if done:
            p.zrem(keys.calls_setting_up(node), *done)
        p.execute()  # (the node's {n:<node>} slot: one transaction on a Redis Cluster too)
    # where the node's AMI is (icsctl, peers) and its last beat, kept: dates its death (ami.peers)
    with r.pipeline(transaction=False) as p:
        p.hset(keys.node(node), mapping={"beat_ms": now, **(where or {})})
        p.sadd(keys.NODES, node)
        p.execute()


def status(r: redis.Redis, node: str = keys.DEFAULT_NODE) -> dict:
    """For icsctl status: the heartbeat's age, the live count, the calls setting up."""
    now = now_ms()
    with r.pipeline(transaction=False) as p:
        p.get(keys.listener_alive(node))
        p.get(keys.live_calls(node))
        p.zcount(keys.calls_setting_up(node), now - SETTING_UP_MAX_MS, "+inf")
        alive, live, pending = p.execute()
    return {"listener_alive": alive is not None,
            "heartbeat_age_ms": max(0, now - int(alive)) if alive else None,
            "live_calls": int(live) if live is not None else None,
            "setting_up": int(pending)}
