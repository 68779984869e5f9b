"""Call nodes of a cluster sharing one Redis (README, Cluster): each node's heartbeat, count
and admissions are its own, a listener sweeps only its own node's calls, and a dead peer
is told from one whose listener alone is down. The whole path runs in tests/e2e/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import socket

from ami import listener as listener_mod
from ami import peers
from ics import capacity, keys, records
from ics.store import now_ms


def test_each_node_counts_and_admits_on_its_own(store):
    capacity.beat(store.r, live={"a-1", "a-2"}, known={"a-1", "a-2"}, admitted={}, node="a",
                  where={"ami_host": "127.0.0.2", "ami_port": 5038})
    assert capacity.check(store.r, 2, node="a").room is False      # node a is full ...
    assert capacity.check(store.r, 2, node="b").room is None       # ... node b has no listener
    capacity.beat(store.r, live=set(), known=set(), admitted={}, node="b")
    assert capacity.check(store.r, 2, admit="b-1", node="b").room is True
    assert capacity.setting_up(store.r, "b").keys() == {"b-1"} and not capacity.setting_up(store.r, "a")
    assert capacity.status(store.r, "a")["live_calls"] == 2 and capacity.status(store.r, "b")["setting_up"] == 1
    assert store.r.smembers(keys.NODES) == {"a", "b"}
    assert store.r.hgetall(keys.node("a"))["ami_host"] == "127.0.0.2"
    assert not store.r.exists(keys.LISTENER_ALIVE), "the single box's heartbeat is not a node's"


def test_a_listener_sweeps_only_its_own_nodes_orphans(store):
    old = now_ms() - 60_000
    for cid, node in (("c-a", "a"), ("c-b", "b"), ("c-old", None)):
        records.create(store.r, cid, facility="main", uniqueid=f"{cid}.1", outcome="accepted", started_ms=old,
                       node=node)
    assert listener_mod.orphans(store.r, set(), "a") == ["c-a"]
    assert listener_mod.orphans(store.r, set(), "b") == ["c-b"]
    assert listener_mod.orphans(store.r, set(), keys.DEFAULT_NODE) == ["c-old"]  # records from before nodes


def test_a_silent_node_is_dead_only_if_its_ami_does_not_answer(store):
    capacity.beat(store.r, live=set(), known=set(), admitted={}, node="a")
    capacity.beat(store.r, live=set(), known=set(), admitted={}, node="b")
    store.r.delete(keys.listener_alive("b"))  # b's heartbeat expired
    assert peers.silent(store.r, "a").keys() == {"b"} and peers.silent(store.r, "b") == {}
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]   # nothing listens there: refused
    assert "connect" in asyncio.run(peers.ami_probe("127.0.0.1", port))

    async def banner_server():
        async def greet(reader, writer):
            writer.write(b"Asterisk Call Manager/11.0.0\r\n")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        async with server:
            return await peers.ami_probe("127.0.0.1", server.sockets[0].getsockname()[1])
    assert asyncio.run(banner_server()) is None   # its Asterisk lives: its calls go on
    assert peers.claim(store.r, "b", "a") and not peers.claim(store.r, "b", "main"), "one peer sweeps"
    records.create(store.r, "live-b", facility="main", node="b", outcome="accepted")
    records.create(store.r, "done-b", facility="main", node="b", outcome="accepted")
    records.update(store.r, "done-b", settled="1")
    records.create(store.r, "live-a", facility="main", node="a", outcome="accepted")
    assert [r["call_id"] for r in peers.unsettled_calls(store.r, "b")] == ["live-b"]


def test_node_id_is_checked_at_start_up():
    from ics import config
    assert config.load(environ={})["node"]["id"] == keys.DEFAULT_NODE
    assert config.load(environ={"ICS_NODE_ID": "b"})["node"]["id"] == "b"
    for bad in ("", "Node A", "a:b", "x" * 17):
        try:
            config.load(environ={"ICS_NODE_ID": bad})
        except config.ConfigError as exc:
            assert "node.id" in str(exc)
        else:
            raise AssertionError(f"node.id {bad!r} accepted")
