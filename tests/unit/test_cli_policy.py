"""icsctl for facility policy: units and schedules, approval states, status and quotas,
lockdowns, privileged numbers, the audit log, policy settings on a facility."""

from __future__ import annotations

import json

from ics.destination import e164
from ics import keys, records

from .test_cli import INMATE, NUMBER, OTHER, events, one_line_error, run, sounds, world  # noqa: F401


def test_facility_policy_settings_are_created_checked_and_shown(run, store):
    status, _, _ = run("facility", "create", "cook", "--name", "Cook County Jail", "--no-audio",
                       "--timezone", "America/Chicago", "--schedule", "mon-fri 08:00-21:00",
                       "--approved-max", "10", "--notice-interval-s", "120", "--caller-id", "3125550000")
    assert status == 0
    doc = json.loads(run("facility", "show", "cook", "--json")[1])
    assert (doc["timezone"], doc["schedule"], doc["approved_max"], doc["notice_interval_s"],
            doc["caller_id"]) == ("America/Chicago", "mon-fri 08:00-21:00", 10, 120, "3125550000")
    out = run("facility", "show", "cook")[1]
    assert "every 120 s" in out and "3125550000" in out
    status, _, err = run("facility", "create", "bad", "--name", "Bad", "--no-audio", "--timezone", "Moon/Base")
    assert status == 1
    one_line_error(err, "unknown time zone 'Moon/Base'")


def test_units_schedules_and_inmate_status(run, world):
    assert run("unit", "create", "main", "A", "--name", "A Block", "--schedule", "daily 08:00-20:00")[0] == 0
    status, _, err = run("unit", "create", "main", "B", "--name", "B Block", "--schedule", "mon 8-9")
    assert status == 1 and "schedule" in err
    assert run("inmate", "unit", INMATE, "A")[0] == 0
    assert world.inmate(INMATE)["unit"] == "A"
    assert run("unit", "schedule", "main", "A", "sat,sun 10:00-12:00")[0] == 0
    doc = json.loads(run("unit", "list", "main", "--json")[1])
    assert doc["units"] == [{"id": "A", "name": "A Block", "schedule": "sat,sun 10:00-12:00", "lockdown": False}]
    status, out, err = run("inmate", "status", INMATE, "restricted", "--calls-per-week", "5")
    assert status == 0 and "5 calls/week" in out
    assert events(err)[-1]["event"] == "ops.inmate_status"
    doc = json.loads(run("inmate", "show", INMATE, "--json")[1])
    assert (doc["unit"], doc["status"], doc["quota_calls_week"]) == ("A", "restricted", 5)
    status, _, err = run("inmate", "status", INMATE, "restricted")
    assert status == 1 and "weekly quota" in err


def test_request_approve_reject_and_the_list(run, world):
    assert run("inmate", "request", INMATE, OTHER)[0] == 0
    assert world.number_state(INMATE, OTHER) == "pending"
    rows = {d["number"]: d["approval"] for d in json.loads(run("inmate", "numbers", INMATE, "--json")[1])["numbers"]}
    assert rows == {e164(NUMBER): "approved", e164(OTHER): "pending"}
    status, out, _ = run("inmate", "approve", INMATE, OTHER)
    assert status == 0 and "was pending" in out
    assert run("inmate", "reject", INMATE, OTHER)[0] == 0
    assert world.number_state(INMATE, OTHER) == "rejected"
    assert "not callable" in run("inmate", "numbers", INMATE)[1]
    status, _, err = run("inmate", "request", INMATE, "8005551212")
    assert status == 1
    one_line_error(err, "Toll-free")


def test_lockdown_on_off_is_audited(run, world):
    status, out, _ = run("lockdown", "on", "--facility", "main", "--by", "Warden Ames", "--note", "count")
    assert status == 0 and "new calls are refused" in out
    assert world.lockdown_for("main")["by"] == "Warden Ames"
    assert run("lockdown", "off", "--facility", "main", "--by", "Warden Ames")[0] == 0
    status, _, err = run("lockdown", "off", "--facility", "main", "--by", "Warden Ames")
    assert status == 1 and "not in lockdown" in err
    doc = json.loads(run("audit", "--json")[1])
    assert [(e["action"], e["by"]) for e in doc["audit"]] == [("lockdown_on", "Warden Ames"),
                                                              ("lockdown_off", "Warden Ames")]


def test_privileged_numbers(run, world):
    assert run("privileged", "add", NUMBER, "--note", "Attorney J. Smith, bar 12345")[0] == 0
    assert world.r.hget(keys.PRIVILEGED, e164(NUMBER)) == "Attorney J. Smith, bar 12345"
    doc = json.loads(run("privileged", "list", "--json")[1])
    assert doc == {"privileged": [{"number": e164(NUMBER), "note": "Attorney J. Smith, bar 12345"}]}
    assert "(privileged)" in run("inmate", "numbers", INMATE)[1]
    assert run("privileged", "remove", NUMBER)[0] == 0
    assert run("privileged", "remove", NUMBER)[0] == 1


def test_monitor_needs_a_live_call_and_reachable_ami(run, world, store, monkeypatch):
    status, _, err = run("monitor", "start", "20261122101500-0123abcd", "--phone", "investigator1", "--by", "Det")
    assert status == 1
    one_line_error(err, "no such call")
    records.create(store.r, "20261122101500-0123abcd", facility="main", channel="PJSIP/inmate1-00000001",
                   uniqueid="1.1", outcome="accepted")
    monkeypatch.setenv("ICS_AMI_PORT", "1")
    monkeypatch.setenv("ICS_AMI_SECRET", "x")
    status, _, err = run("monitor", "cut", "20261122101500-0123abcd", "--by", "Det")
    assert status == 1
    one_line_error(err, "cannot reach AMI")
    # a call on another node is cut through that node's AMI, found where its listener wrote it
    records.update(store.r, "20261122101500-0123abcd", node="b")
    status, _, err = run("monitor", "cut", "20261122101500-0123abcd", "--by", "Det")
    one_line_error(err, "call node 'b' is unknown")
    store.r.hset(keys.node("b"), mapping={"ami_host": "127.0.0.1", "ami_port": 2})
    status, _, err = run("monitor", "cut", "20261122101500-0123abcd", "--by", "Det")
    assert status == 1
    one_line_error(err, "cannot reach AMI at 127.0.0.1:2")
