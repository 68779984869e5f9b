"""Acting on calls in progress over AMI: investigators' live monitoring and cut-off,
and a lockdown that ends live calls. Every use is written to the audit log.

Live monitoring rings the investigator's phone (an endpoint in context
ics-investigator) with ChanSpy on the inmate channel, listen only (ChanSpy never
whispers without its w/W/B options; q = no beep, E = leave when the call ends).
Privileged (attorney) calls are refused, and the refusal is audited too.

In a cluster each call is on one node: its record names it (node) and icsctl acts
through that node's AMI (node_ami), found in Redis where the node's listener wrote it.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from . import keys, records
from .amiclient import AmiClient, AmiError
from .store import ID_RE, Store, StoreError, now_ms

SPY_OPTIONS = "qE"
CUT_CONTEXT = "ics-cut"  # exten = reason code: plays prompts/cut-<reason> to the leg, hangs up
LIVE_OUTCOMES = ("dialing", "announcing", "accepted")
LIVE_WINDOW_MS = 6 * 3_600_000  # no call lasts longer: older unsettled records are not live
MONITOR_ID_RE = re.compile(r"^[0-9a-f]{12}$")
CHANNEL_RE = re.compile(r"^[A-Za-z0-9/_.@:+-]+$")


def cut_redirect(legs: list[str], reason: str) -> dict[str, Any]:
    """The AMI Redirect that sends a call's legs (the inmate's first, then its peer) to
    [ics-cut], where each hears why the call ends and is hung up. Used by the listener's
    rules and by a lockdown alike."""
    headers: dict[str, Any] = {"Channel": legs[0], "Context": CUT_CONTEXT, "Exten": reason, "Priority": 1}
    if len(legs) > 1:
        headers.update(ExtraChannel=legs[1], ExtraContext=CUT_CONTEXT, ExtraExten=reason, ExtraPriority=1)
    return headers


def node_ami(store: Store, node: str | None) -> AmiClient:
    """The AMI of the call node carrying a call (its record's node): this host's configured
    AMI for its own node (and for records from before nodes), else where that node's listener
    said its AMI is (keys.node). Same AMI user and secret on every node."""
    cfg = store.cfg
    if not node or node == cfg["node"]["id"]:
        return AmiClient.from_config(cfg)
    where = store.r.hgetall(keys.node(node))
    if not where.get("ami_host") or not str(where.get("ami_port", "")).isdigit():
        raise AmiError(f"call node {node!r} is unknown: no AMI listener of it ever ran against this Redis")
    a = cfg["ami"]
    if not a["secret"]:
        raise AmiError("ami.secret is empty (set ICS_AMI_SECRET)")
    return AmiClient(where["ami_host"], int(where["ami_port"]), a["user"], a["secret"])


def live_record(store: Store, call_id: str) -> dict:
    rec = records.get(store.r, call_id)
    if rec is None:
        raise StoreError(f"no such call {call_id}")
    if rec.get("settled") == "1" or rec.get("ended_ms"):
        raise StoreError(f"call {call_id} has ended")
    if not CHANNEL_RE.match(rec.get("channel", "")):
        raise StoreError(f"call {call_id} has no usable channel name")
    return rec


def _refuse_privileged(store: Store, rec: dict, action: str, by: str) -> None:
    if rec.get("privileged") == "1":
        store.audit(f"{action}_refused", by, rec["call_id"], "privileged call: never monitored")
        raise StoreError(f"call {rec['call_id']} is privileged (attorney): it is never monitored "
                         "or cut off; this attempt was audited")


def call_channels(ami: AmiClient, rec: dict) -> list[dict[str, str]]:
    """The call's live channels (same Linkedid as the inmate channel), inmate channel first."""
    linked = rec.get("uniqueid", "")
    chans = [c for c in ami.channels() if linked and c.get("Linkedid") == linked]
    return sorted(chans, key=lambda c: c.get("Channel") != rec.get("channel"))


def monitor_start(store: Store, ami: AmiClient, call_id: str, by: str, phone: str) -> str:
    """Ring the investigator's phone and listen in; returns the monitor id."""
    if not ID_RE.match(phone):
        raise StoreError(f"invalid investigator phone {phone!r}")
    rec = live_record(store, call_id)
    _refuse_privileged(store, rec, "monitor", by)
    mid = secrets.token_hex(6)
    channel_id = f"ics-monitor-{mid}"
    resp = ami.action("Originate", Channel=f"PJSIP/{phone}", Application="ChanSpy",
                      Data=f"{rec['channel']},{SPY_OPTIONS}", ChannelId=channel_id, Async="true",
                      Timeout=30000, CallerID=f'"ICS monitor" <{call_id[:14]}>')
    if resp.get("Response") != "Success":
        raise AmiError(f"Originate to {phone} refused: {resp.get('Message', '')}")
    store.r.hset(keys.monitor(mid), mapping={"call": call_id, "by": by, "phone": phone,
                                             "channel_id": channel_id, "started_ms": now_ms()})
    store.audit("monitor_start", by, call_id, f"monitor {mid} on PJSIP/{phone}")
    return mid


def _monitor(store: Store, mid: str) -> dict:
    if not MONITOR_ID_RE.match(mid):
        raise StoreError(f"invalid monitor id {mid!r}")
    mon = store.r.hgetall(keys.monitor(mid))
    if not mon:
        raise StoreError(f"no such monitor {mid}")
    return mon


def monitor_node(store: Store, mid: str) -> str:
    """The node whose AMI carries a monitor's spy channel: the monitored call's."""
    return (records.get(store.r, _monitor(store, mid)["call"]) or {}).get("node", "")


def monitor_stop(store: Store, ami: AmiClient, mid: str, by: str) -> dict:
    mon = _monitor(store, mid)
    if mon.get("stopped_ms"):
        raise StoreError(f"monitor {mid} already stopped")
    for chan in ami.channels():
        if chan.get("Uniqueid") == mon["channel_id"]:
            ami.action("Hangup", Channel=chan["Channel"])
    store.r.hset(keys.monitor(mid), "stopped_ms", now_ms())
    store.audit("monitor_stop", by, mon["call"], f"monitor {mid}")
    return mon


def cut_off(store: Store, ami: AmiClient, call_id: str, by: str) -> None:
    """End a live call now: reason cut_off, audited."""
    rec = live_record(store, call_id)
    _refuse_privileged(store, rec, "cut_off", by)
    records.record_cut(store.r, call_id, "cut_off", f"icsctl monitor cut by {by}", now_ms())
    resp = ami.action("Hangup", Channel=rec["channel"])
    if resp.get("Response") != "Success":
        raise AmiError(f"Hangup of {rec['channel']} refused: {resp.get('Message', '')}")
    store.audit("cut_off", by, call_id, rec["channel"])


def live_calls(store: Store, fid: str, uid: str | None = None) -> list[dict]:
    """Calls of a facility (or one living unit) that have been placed and not ended."""
    since = now_ms() - LIVE_WINDOW_MS
    out = []
    for cid in store.r.zrangebyscore(keys.CALLS, since, "+inf"):
        rec = records.get(store.r, cid)
        if (rec and rec.get("facility") == fid and (not uid or rec.get("unit") == uid)
                and rec.get("outcome") in LIVE_OUTCOMES and rec.get("settled") != "1"
                and not rec.get("ended_ms")):
            out.append(rec)
    return out


def end_for_lockdown(store: Store, fid: str, uid: str | None, by: str) -> list[str]:
    """Send both legs of every live call in scope to [ics-cut] (each hears why, as when a
    rule of the listener ends a call), reason lockdown_ended, through the AMI of the node
    carrying each. Returns the call ids ended."""
    by_node: dict[str, list[dict]] = {}
    for rec in live_calls(store, fid, uid):
        by_node.setdefault(rec.get("node", ""), []).append(rec)
    ended = []
    for node, recs in by_node.items():
        with node_ami(store, node) as ami:
            ended += _end_live(store, ami, recs, by)
    return ended


def _end_live(store: Store, ami: AmiClient, recs: list[dict], by: str) -> list[str]:
    ended = []
    for rec in recs:
        chans = call_channels(ami, rec)
        if not chans:
            continue  # gone meanwhile: its hangup handler settles it
        records.record_cut(store.r, rec["call_id"], "lockdown_ended", f"icsctl lockdown on --end-live by {by}",
                           now_ms())
        resp = ami.action("Redirect", **cut_redirect([c["Channel"] for c in chans], "lockdown_ended"))
        if resp.get("Response") != "Success":
            ami.action("Hangup", Channel=chans[0]["Channel"])
        store.audit("lockdown_end_call", by, rec["call_id"], ", ".join(c["Channel"] for c in chans))
        ended.append(rec["call_id"])
    return ended
