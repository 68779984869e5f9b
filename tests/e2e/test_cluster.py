"""The cluster (README, Cluster): Kamailio in front of two call nodes, each an Asterisk with
its own FastAGI server and AMI listener, Redis shared (docker/stack.sh up-cluster, beside
the single box in the worker's namespace). The phones register at Kamailio and place every
call through it; called phones are reached back through it.

- Calls spread: two calls in a row go to both nodes (round robin); each call is run,
  enforced and settled on its own node only, billed once.
- A node dies whole mid-call (Asterisk, FastAGI, listener SIGKILLed): a live peer's
  listener (the other node's, or the single box's beside it: same Redis) records the call
  as a system drop with the NodeDown evidence, dated by the dead node's last heartbeat,
  and settlement credits it, once; Kamailio takes the node out within 5 s, and new calls,
  two placed right after the kill included (round robin sends one of them to the dead
  node first: it fails over), reach the surviving node within 5 s.
- On the Redis Cluster lab (make test runs it), the Redis master holding a live call's account
  is SIGKILLed while the call runs on a node: its replica takes over, the call goes on, and it
  is settled once by its own node (one charge, `ledger check` passes).
- A node takes SIP only from Kamailio: a handset calling a node directly is refused (403).
- icsctl monitor start / stop / cut and lockdown --end-live act on the node carrying each
  call (its record's node), not the AMI configured for icsctl (here the single box's, which
  carries none of them); the investigator's phone, registered at Kamailio, is rung from
  that node through Kamailio.
"""

import json
import subprocess
import time

import pytest

from ics import ledger, records

from tests.conftest import _check_asterisk_log, _log_size
from tests.e2e.test_billing_calls import accept, charges
from tests.e2e.test_fault_settlement import credits, wait_credited
from tests.e2e.test_policy import icsctl
from tests.e2e.test_redis_failover import CLUSTER as REDIS_CLUSTER, account_master_killed
from tests.support import cluster, services, stack_dir
from tests.support.callflow import INMATE, NUMBER, OTHER_NUMBER, balance, latest_call, make_world, wait_settled

pytestmark = pytest.mark.e2e

CLUSTER_USERS = ("inmate1", NUMBER, "investigator1")
FAILOVER_S = 5  # a dead node is out of Kamailio's list, and new calls reach another node, within this


@pytest.fixture(scope="module")
def cluster_up(stack):
    cluster.up()
    try:
        yield
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def taps(cluster_up):
    t = cluster.Taps.open()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(scope="module")
def _cluster_phones(cluster_up, phones):
    """The phones this module registers at Kamailio, removed from the session's harness after it.
    The single box's phones of the same users go first: pjsua hands an incoming INVITE to the
    first account of its user, whichever transport it came in on (they are made again on use)."""
    for phone in [p for p in phones.phones.values() if p.user in CLUSTER_USERS and p.server != cluster.KAMAILIO]:
        phones.remove(phone)
    yield
    for phone in [p for p in phones.phones.values() if p.server == cluster.KAMAILIO]:
        phones.remove(phone)


@pytest.fixture
def clines(taps, phones, _cluster_phones):
    """The inmate's handset, the family's phone and an investigator's, registered at Kamailio."""
    regs = [phones.phone(user, server=cluster.KAMAILIO) for user in CLUSTER_USERS]
    taps.ensure_connected()
    for p in regs:
        p.register(10)
    return regs


@pytest.fixture(autouse=True)
def _node_logs(request, cluster_up):
    """Like every e2e test, an ERROR or WARNING in a node's Asterisk log fails it."""
    start = {node: _log_size(cluster.asterisk_log(node)) for node in cluster.NODES}
    yield
    for node in cluster.NODES:
        _check_asterisk_log(cluster.asterisk_log(node), start[node], f"{request.node.nodeid} [node {node}]")


def settle_lines(call_id: str) -> int:
    """call.settled lines for the call in every service's log: the nodes' and the single box's."""
    return sum(len(services.log_events(f"{svc}{node}", "call.settled", call_id))
               for svc in ("fastagi", "ami") for node in ("", *(f"-{n}" for n in cluster.NODES)))


def inmate_channel_on(taps, node: str, mark, timeout: float) -> dict:
    return taps.wait_for(lambda e: e["_node"] == node and e.get("Event") == "Newchannel"
                         and e.get("Channel", "").startswith("PJSIP/inmate1"), timeout, since=mark)


def dispatcher_flags() -> dict[str, str]:
    """Kamailio's view of the nodes: address -> flags (A active, I inactive, P probing)."""
    out = subprocess.run(["kamcmd", "-s", f"unix:{stack_dir() / 'kamailio' / 'kamailio.ctl'}",
                          "dispatcher.list"], capture_output=True, text=True, timeout=5).stdout
    flags, uri = {}, None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("URI:"):
            uri = line.split("sip:", 1)[1].split(":")[0]
        elif line.startswith("FLAGS:") and uri:
            flags[uri] = line.split(":", 1)[1].strip()
    return flags


def test_calls_through_kamailio_spread_over_both_nodes_each_run_and_billed_on_its_own(taps, clines):
    inmate, family, _ = clines
    world = make_world(balance_cents=500)
    done = []
    for _ in range(2):
        mark = taps.mark()
        call, callee = accept(taps, inmate, family)
        rec = latest_call(world)
        node = rec["node"]
        # the call is on the node its record names, and on no other
        legs = taps.events(lambda e: e.get("Event") == "BridgeEnter", since=mark)
        assert {e["_node"] for e in legs} == {node}, legs
        assert rec["uniqueid"] in {e["Linkedid"] for e in legs}
        time.sleep(1)
        callee.hangup()
        call.wait_disconnected(10)
        rec = wait_settled(world, call_id=rec["call_id"])
        assert (rec["reason"], rec["billed_minutes"], rec["billed_cents"]) == ("called_hangup", 1, 11), rec
        done.append(rec)
    assert sorted(r["node"] for r in done) == ["a", "b"], "round robin: the two calls went to both nodes"
    for rec in done:
        other = "b" if rec["node"] == "a" else "a"
        # watched by its own node's listener only, settled once
        assert len(services.log_events(f"ami-{rec['node']}", "enforce.watching", rec["call_id"])) == 1
        assert not services.log_events(f"ami-{other}", "enforce.watching", rec["call_id"])
        assert settle_lines(rec["call_id"]) == 1
        assert [int(e["amount_cents"]) for e in charges(world, rec["call_id"])] == [11]
    assert balance(world) == 500 - 22 and ledger.check(world.store.r)["ok"]


def test_node_killed_mid_call_is_settled_by_its_peer_and_new_calls_fail_over(taps, clines):
    inmate, family, _ = clines
    world = make_world(balance_cents=500)
    world.store.approve_number(INMATE, OTHER_NUMBER)
    call, callee = accept(taps, inmate, family)
    rec = latest_call(world)
    call_id, dead = rec["call_id"], rec["node"]
    alive = "b" if dead == "a" else "a"
    time.sleep(2)
    kamailio_log = stack_dir() / "log" / "kamailio.log"
    kamailio_from = len(kamailio_log.read_text())
    killed_at = int(time.time() * 1000)
    cluster.kill_node(dead)
    try:
        # two new calls at once: round robin gives one of them to the dead node before Kamailio
        # knows; that INVITE times out there (2 s) and goes on to the other node
        mark = taps.mark()
        t0 = time.monotonic()
        new = [inmate.call(OTHER_NUMBER) for _ in range(2)]
        while len(taps.events(lambda e: e["_node"] == alive and e.get("Event") == "Newchannel"
                              and e.get("Channel", "").startswith("PJSIP/inmate1"), since=mark)) < 2:
            assert time.monotonic() - t0 < FAILOVER_S, "new calls did not reach the surviving node"
            time.sleep(0.05)
        dead_addr = cluster.node_env(dead)["ICS_NODE_ADDRESS"]
        assert f"call node sip:{dead_addr}:5060 failed" in kamailio_log.read_text()[kamailio_from:], \
            "no new call was sent to the dead node first: failover not exercised"
        for c in new:
            c.hangup()
        # Kamailio took the dead node out (its OPTIONS pings went unanswered)
        deadline = time.monotonic() + FAILOVER_S
        while "I" not in dispatcher_flags().get(dead_addr, ""):
            assert time.monotonic() < deadline, f"node {dead} still in: {dispatcher_flags()}"
            time.sleep(0.2)
        out_after_s = (int(time.time() * 1000) - killed_at) / 1000
        assert out_after_s < FAILOVER_S
        # the old call: a system drop recorded and settled by the surviving node's listener
        rec = wait_settled(world, call_id=call_id)
        assert rec["reason"] == "system_error" and rec["rule_threshold"] == f"node_down={dead}", rec
        evidence = json.loads(rec["evidence"])
        assert [e["event"] for e in evidence] == ["NodeDown"] and evidence[0]["node"] == dead, evidence
        assert killed_at - 2000 <= rec["ended_ms"] <= killed_at, "dated by the dead node's last heartbeat"
        # by a live peer: the other node's listener, or the single box's (same Redis, also a peer)
        assert len(services.log_events(f"ami-{alive}", "ami.node_down", call_id)
                   + services.log_events("ami", "ami.node_down", call_id)) == 1
        rec = wait_credited(world, call_id)
        assert (rec["billed_minutes"], rec["billed_cents"], rec["credited_cents"]) == (1, 11, 11), rec
        assert [int(e["amount_cents"]) for e in charges(world, call_id)] == [11]
        assert [int(e["amount_cents"]) for e in credits(world, call_id)] == [11]
        assert settle_lines(call_id) == 1
        # the phones of the dead node's call hear nothing more and hang up themselves
        call.hangup()
        callee.hangup()
        # the next calls all go to the surviving node, straight away
        for _ in range(2):
            mark = taps.mark()
            t0 = time.monotonic()
            more = inmate.call(NUMBER)
            inmate_channel_on(taps, alive, mark, 2)
            assert time.monotonic() - t0 < 1.5, "not straight to it: a failover takes 2 s"
            more.hangup()
            time.sleep(0.5)
    finally:
        cluster.up()  # the node comes back (Kamailio's pings put it in again)
    assert balance(world) == 500 and world.store.account(world.account).held_cents == 0
    assert ledger.check(world.store.r)["ok"]
    deadline = time.monotonic() + FAILOVER_S
    while "A" not in dispatcher_flags().get(cluster.node_env(dead)["ICS_NODE_ADDRESS"], ""):
        assert time.monotonic() < deadline, f"node {dead} not back in: {dispatcher_flags()}"
        time.sleep(0.2)


@pytest.mark.skipif(not REDIS_CLUSTER, reason="needs the Redis Cluster lab (make test runs it)")
def test_a_redis_master_killed_mid_call_on_a_node_fails_over_and_the_call_is_settled_once(taps, clines):
    inmate, family, _ = clines
    world = make_world(balance_cents=500, rule_silence=False)
    call, callee = accept(taps, inmate, family)
    rec = latest_call(world)
    with account_master_killed(world):
        time.sleep(2)
        assert not call.disconnected and not callee.disconnected  # the call goes on
        callee.hangup()
        call.wait_disconnected(10)
        rec = wait_settled(world, timeout=30, call_id=rec["call_id"])
    assert (rec["reason"], rec["billed_minutes"], rec["billed_cents"]) == ("called_hangup", 1, 11), rec
    assert len(services.log_events(f"ami-{rec['node']}", "enforce.watching", rec["call_id"])) == 1
    assert settle_lines(rec["call_id"]) == 1
    assert [int(e["amount_cents"]) for e in charges(world, rec["call_id"])] == [11]
    assert balance(world) == 500 - 11 and world.store.account(world.account).held_cents == 0
    doc = ledger.check(world.store.r)
    assert doc["ok"], doc


def test_icsctl_monitors_cuts_and_locks_down_through_the_node_carrying_each_call(taps, clines):
    inmate, family, investigator = clines
    world = make_world(balance_cents=500)
    mark = taps.mark()
    call, callee = accept(taps, inmate, family)
    rec = latest_call(world)
    call_id, node = rec["call_id"], rec["node"]

    rc, out = icsctl("monitor", "start", call_id, "--phone", "investigator1", "--by", "Det. Ray")
    assert rc == 0, out
    monitor_id = out.split()[1].rstrip(":")
    spy = investigator.wait_incoming(10)  # rung from the call's node, through Kamailio
    spy.answer()
    started = taps.wait_for(lambda e: e.get("Event") == "ChanSpyStart"
                            and not e.get("SpyerChannel", "").startswith("AudioSocket/"), 10, since=mark)
    assert started["_node"] == node and started["SpyeeChannel"].startswith("PJSIP/inmate1")
    assert icsctl("monitor", "stop", monitor_id, "--by", "Det. Ray")[0] == 0
    spy.wait_disconnected(10)

    assert icsctl("monitor", "cut", call_id, "--by", "Lt. Cho")[0] == 0
    call.wait_disconnected(10)
    callee.wait_disconnected(10)
    hung = taps.wait_for(lambda e: e.get("Event") == "Hangup" and e.get("Channel", "").startswith("PJSIP/inmate1"),
                         10, since=mark)
    assert hung["_node"] == node
    rec = wait_settled(world, call_id=call_id)
    assert (rec["reason"], rec["rule"]) == ("cut_off", "cut_off") and "Lt. Cho" in rec["rule_threshold"]
    assert [(e["action"], e["by"]) for e in world.store.audit_entries(call_id)] == [
        ("monitor_start", "Det. Ray"), ("monitor_stop", "Det. Ray"), ("cut_off", "Lt. Cho")]

    # the next call is on the other node (round robin): a lockdown ends it through that node
    mark = taps.mark()
    call, callee = accept(taps, inmate, family)
    rec = latest_call(world)
    assert rec["node"] != node
    rc, out = icsctl("lockdown", "on", "--facility", "main", "--by", "Warden Ames", "--end-live")
    assert rc == 0 and "live calls ended: 1" in out, out
    call.wait_disconnected(20)
    callee.wait_disconnected(20)
    heard = {(e["_node"], e["Channel"].split("-")[0]) for e in taps.events(
        {"Event": "TestEvent", "State": "PLAYBACK", "Message": "ics/prompts/cut-lockdown_ended"}, since=mark)}
    assert heard == {(rec["node"], "PJSIP/inmate1"), (rec["node"], f"PJSIP/{NUMBER}")}
    assert wait_settled(world, call_id=rec["call_id"])["reason"] == "lockdown_ended"
    assert icsctl("lockdown", "off", "--facility", "main", "--by", "Warden Ames")[0] == 0


def test_a_node_takes_sip_only_from_kamailio(taps, clines):
    inmate, _, _ = clines
    world = make_world(balance_cents=500)
    mark = taps.mark()
    # a handset that skips the front and calls a node directly (no digest there: Kamailio's job)
    direct = inmate.call(f"sip:{NUMBER}@{cluster.node_env('a')['ICS_NODE_ADDRESS']}:5060")
    direct.wait_disconnected(10)
    assert direct.last_status_code == 403, (direct.last_status_code, direct.last_reason)
    time.sleep(0.5)
    assert not taps.events({"Event": "Newchannel"}, since=mark), "no channel for a request from elsewhere"
    assert not records.recent(world.store.r, 1), "no call record"
