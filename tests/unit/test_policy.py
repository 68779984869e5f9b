"""Facility policy without Asterisk: destinations, schedules, settings, approval states,
status and quotas, lockdowns, privileged numbers, and the inmate flow's decisions
through the FastAGI server against a scripted Asterisk on a real Redis."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from agi.flows.inmate import notice_options, recording_name
from ics import config, destination, livecalls, policy, rating, records
from ics.store import StoreError

from .test_flows_billing import port, run_call  # noqa: F401 (fixture)
from .test_flows_scripted import INMATE, NUMBER, make_world
from tests.support import seed_week


# --- pure policy ---------------------------------------------------------------------------

@pytest.mark.parametrize("number,reason", [
    ("911", "emergency_not_allowed"), ("112", "emergency_not_allowed"),
    ("411", "short_code_not_allowed"), ("611", "short_code_not_allowed"),
    ("*67", "short_code_not_allowed"), ("0", "short_code_not_allowed"), ("12345", "short_code_not_allowed"),
    ("8005551212", "toll_free_not_allowed"), ("8885551212", "toll_free_not_allowed"),
    ("8335551212", "toll_free_not_allowed"), ("+44 800 123 4567", "toll_free_not_allowed"),
    ("9005551212", "premium_not_allowed"), ("+44 909 876 5432", "premium_not_allowed"),
    # the cases: 011-1 is the same number as 1, and refused the same
    ("01118005551234", "toll_free_not_allowed"), ("01119005551234", "premium_not_allowed"),
    ("+33 810 12 34 56", "number_type_not_allowed"),  # French shared cost
    ("+44 70 1234 5678", "number_type_not_allowed"),  # UK personal (follow-me) number
    # 976 exchanges are ordinary numbers in today's plan (the old hand rule refused them)
    ("3129765555", None),
    ("3125550100", None), ("8015550100", None), ("011442079460000", None), ("8769271234", None),
])
def test_destination_refusals(number, reason):
    assert policy.destination_refusal(destination.parse(number)) == reason


def test_schedule_windows_days_and_edges():
    s = policy.parse_schedule("mon-fri 08:00-11:30,13:00-21:45; sat,sun 09:00-20:00")
    monday = datetime(2026, 11, 23)  # a Monday
    assert s.allows(monday.replace(hour=8)) and s.allows(monday.replace(hour=11, minute=29))
    assert not s.allows(monday.replace(hour=11, minute=30))  # windows are [start, end)
    assert not s.allows(monday.replace(hour=12)) and s.allows(monday.replace(hour=21, minute=44))
    assert not s.allows(monday.replace(hour=7, minute=59))
    sunday = datetime(2026, 11, 29)
    assert s.allows(sunday.replace(hour=9)) and not s.allows(sunday.replace(hour=8, minute=59))
    assert policy.parse_schedule("").allows(monday.replace(hour=3))  # empty: any time
    wrap = policy.parse_schedule("fri-mon 00:00-24:00")
    assert wrap.allows(sunday) and wrap.allows(monday) and not wrap.allows(datetime(2026, 11, 25))
    assert policy.parse_schedule("daily 10:00-10:15").allows(datetime(2026, 11, 25, 10, 14))


@pytest.mark.parametrize("text,problem", [
    ("mon 9:00-10:00", "HH:MM"), ("mon 10:00-09:00", "ends before"), ("funday 09:00-10:00", "day"),
    ("mon", "days then"), ("mon 09:00", "HH:MM-HH:MM"), ("mon 24:30-25:00", "after 24:00"),
])
def test_bad_schedules_are_refused_with_the_reason(text, problem):
    with pytest.raises(ValueError, match=problem):
        policy.parse_schedule(text)


def test_weeks_and_dates_are_in_the_facility_time_zone():
    ms = int(datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc).timestamp() * 1000)  # Monday 03:00 UTC
    assert policy.week_of(ms, "UTC") == "2026W49"
    assert policy.week_of(ms, "America/Chicago") == "2026W48"  # still Sunday evening in Chicago
    assert policy.local_date(ms, "America/Chicago") == "2026-11-29"


@pytest.mark.parametrize("key,value,problem", [
    ("timezone", "Mars/Olympus", "unknown time zone"), ("schedule", "mon 25:00-26:00", "HH:MM"),
    ("approved_max", "0", "approved_max"), ("notice_interval_s", "5", "notice_interval_s"),
    ("notice_interval_s", "900", "notice_interval_s"), ("caller_id", "12345", "caller_id"),
])
def test_policy_settings_are_checked_at_start_up(key, value, problem):
    with pytest.raises(config.ConfigError, match=problem):
        config.load(environ={f"ICS_FACILITY_DEFAULTS_{key.upper()}": value})


def test_notice_options_and_recording_names():
    assert notice_options(0, 900_000) == ""
    assert notice_options(60, 900_000) == ":840000:60000"  # first after 60 s, then every 60 s
    assert notice_options(120, 60_000) == ""  # the call ends before the first notice
    fac = {"id": "main", "timezone": "UTC"}
    name = recording_name(fac, INMATE, "20261122101500-0123abcd")
    assert name.startswith(f"ics/main/{INMATE}/") and name.endswith("/20261122101500-0123abcd.wav")


# --- store ----------------------------------------------------------------------------------

@pytest.fixture
def world(redis_url, tmp_path):
    return make_world(redis_url, tmp_path, approved_max=3)


def test_approval_states_and_the_list_limit(world):
    _, store = world
    assert store.set_number_state(INMATE, "3125550101", "pending") == ""
    assert store.approve_number(INMATE, "3125550101") == "pending"
    store.set_number_state(INMATE, "3125550102", "pending")
    with pytest.raises(StoreError, match="already has 3 pending or approved"):
        store.set_number_state(INMATE, "3125550103", "pending")
    store.set_number_state(INMATE, "3125550102", "rejected")  # rejected numbers do not count
    store.approve_number(INMATE, "3125550103")
    assert store.number_states(INMATE) == {"+13125550100": "approved", "+13125550101": "approved",
                                           "+13125550102": "rejected", "+13125550103": "approved"}
    assert store.approved_numbers(INMATE) == ["+13125550100", "+13125550101", "+13125550103"]
    store.approve_number(INMATE, NUMBER)  # already counted: no limit error
    store.approve_number(INMATE, "(312) 555-0101")  # the same number typed another way: no new entry
    assert len(store.number_states(INMATE)) == 4
    for bad in ("8005551212", "9005551212", "01118005551234", "01119005551234", "911", "411"):
        with pytest.raises(StoreError, match="cannot be approved|short code"):
            store.approve_number(INMATE, bad)
    with pytest.raises(StoreError, match="no such area code or exchange"):
        store.approve_number(INMATE, "3120550100")  # the invalid exchange


def test_concurrent_requests_never_pass_the_limit(world):
    _, store = world  # one approved, limit 3: exactly two of ten racing requests get in
    errors = []

    def request(n):
        try:
            store.set_number_state(INMATE, f"31255502{n:02d}", "pending")
        except StoreError as exc:
            errors.append(exc)
    threads = [threading.Thread(target=request, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 8
    assert sum(1 for s in store.number_states(INMATE).values() if s in ("pending", "approved")) == 3


def test_status_and_quota_rules(world):
    _, store = world
    with pytest.raises(StoreError, match="needs a weekly quota"):
        store.set_inmate_status(INMATE, "restricted")
    with pytest.raises(StoreError, match="only a restricted"):
        store.set_inmate_status(INMATE, "active", quota_calls_week=3)
    with pytest.raises(StoreError, match="status is one of"):
        store.set_inmate_status(INMATE, "paroled")
    store.set_inmate_status(INMATE, "restricted", quota_calls_week=3, quota_minutes_week=45)
    # settlement counts each accepted call once, in the settle script itself
    store.create_account("q1", "Sam", [])
    store.adjust("q1", "deposit", 100)
    for cid, minutes in (("c1", 4), ("c2", 2)):
        assert store.reserve("q1", cid, 11 * minutes)
        store.settle(cid, "q1", 11 * minutes, minutes, 11, 0, (INMATE, "2026W48"))
    store.settle("c2", "q1", 22, 2, 11, 0, (INMATE, "2026W48"))  # a duplicate hang-up: counted once
    assert store.week_usage(INMATE, "2026W48") == (2, 6)
    assert store.week_usage(INMATE, "2026W49") == (0, 0)


def test_unit_schedule_replaces_the_facility_schedule_and_lockdowns_scope(world):
    _, store = world
    store.create_unit("main", "A", "A Block", "mon 08:00-09:00")
    with pytest.raises(StoreError, match="schedule"):
        store.create_unit("main", "B", "B Block", "whenever")
    fac = store.facility("main")
    inmate = store.inmate(INMATE)
    assert store.schedule_for(fac, inmate).always
    store.set_inmate_unit(INMATE, "A")
    assert store.schedule_for(fac, store.inmate(INMATE)).text == "mon 08:00-09:00"
    with pytest.raises(StoreError, match="no unit"):
        store.set_inmate_unit(INMATE, "Z")
    store.create_unit("main", "B", "B Block")
    store.set_lockdown("main", "B", "Lt. Cho", "search", False)
    assert store.lockdown_for("main", "A") is None
    assert store.lockdown_for("main", "B")["scope"] == "unit B"
    store.set_lockdown("main", None, "Warden", "count", True)
    assert store.lockdown_for("main", "A")["scope"] == "facility"
    assert store.clear_lockdown("main", None) and not store.clear_lockdown("main", None)


# --- the inmate flow over FastAGI -------------------------------------------------------------

def result(cmds) -> str:
    return [c for c in cmds if c.startswith('SET VARIABLE "ICS_RESULT"')][-1].split('"')[3]


@pytest.mark.parametrize("case", ["inmate_suspended", "lockdown", "outside_schedule", "quota_exhausted",
                                  "approval_pending", "not_approved", "short_code_not_allowed",
                                  "toll_free_not_allowed", "premium_not_allowed", "invalid_number"])
def test_each_policy_refusal_plays_its_prompt_and_holds_nothing(clock, port, world, case):
    _, store = world
    number = NUMBER
    if case == "inmate_suspended":
        store.set_inmate_status(INMATE, "suspended")
    elif case == "lockdown":
        store.set_lockdown("main", None, "Warden", "", False)
    elif case == "outside_schedule":
        day = policy.DAYS[(policy.local_time(clock(), "UTC").weekday() + 1) % 7]
        store.create_unit("main", "A", "A Block", f"{day} 00:00-24:00")
        store.set_inmate_unit(INMATE, "A")
    elif case == "quota_exhausted":
        store.set_inmate_status(INMATE, "restricted", quota_minutes_week=30)
        seed_week(store, INMATE, policy.week_of(clock(), "UTC"), 1, 30)
    elif case == "approval_pending":
        store.set_number_state(INMATE, "3125550101", "pending")
        number = "3125550101"
    elif case == "not_approved":
        store.set_number_state(INMATE, "3125550101", "rejected")
        number = "3125550101"
    elif case == "short_code_not_allowed":
        number = "411"
    elif case == "toll_free_not_allowed":
        number = "01118005551234"  # the case: toll-free in 011-1 form
    elif case == "premium_not_allowed":
        number = "01119005551234"
    elif case == "invalid_number":
        number = "3120550100"  # the case: an exchange starting with 0
    cmds, rec = run_call(port, store, number)
    assert result(cmds) == "refused"
    assert rec["reason"] == case and rec["outcome"] == "refused"
    assert any(f"prompts/{case.replace('_', '-')}" in c for c in cmds)
    assert store.account("fam1").held_cents == 0


@pytest.mark.parametrize("routed, prompt", [(False, "emergency-not-allowed"), (True, "emergency-routed")])
def test_an_emergency_number_is_refused_at_once_with_its_own_prompt(port, world, routed, prompt):
    """911 is told where help is before any PIN is asked for; the facility can say it routes it."""
    _, store = world
    if routed:
        store.r.hset("ics:facility:main", "emergency_routed", "1")
    cmds, rec = run_call(port, store, "911", digits=())
    assert result(cmds) == "refused" and rec["reason"] == "emergency_not_allowed"
    assert any(f"prompts/{prompt}" in c for c in cmds)
    assert not any("enter-inmate-id" in c for c in cmds)
    assert (rec["number"], rec["dest_kind"]) == ("911", "emergency")


def test_a_call_that_may_dial_carries_caller_id_notice_recording_and_quota_limit(clock, port, world):
    _, store = world
    store.r.hset("ics:facility:main", mapping={"notice_interval_s": 60, "caller_id": "+1 (312) 555-0000"})
    store.set_inmate_status(INMATE, "restricted", quota_minutes_week=30)
    seed_week(store, INMATE, policy.week_of(clock(), "UTC"), 1, 25)  # 5 minutes left
    cmds, rec = run_call(port, store, NUMBER)
    assert result(cmds) == "dial"
    assert 'SET VARIABLE "CALLERID(num)" "3125550000"' in cmds
    assert 'SET VARIABLE "CALLERID(name)" "Test Facility"' in cmds
    assert rec["limit_s"] == 300
    # L() is the backstop a few seconds past the 5 minutes: the first notice still comes 60 s in
    dial_limit = 300_000 + rating.BACKSTOP_MS
    assert f'SET VARIABLE "ICS_LIMIT_MS" "{dial_limit}"' in cmds
    assert f'SET VARIABLE "ICS_NOTICE" ":{dial_limit - 60_000}:60000"' in cmds
    assert rec["privileged"] == "0" and rec["recording"].endswith(f"/{rec['call_id']}.wav")


def test_a_privileged_number_is_flagged_and_gets_no_recording(port, world):
    _, store = world
    store.set_privileged(NUMBER, "Attorney J. Smith")
    cmds, rec = run_call(port, store, NUMBER)
    assert result(cmds) == "dial"
    assert rec["privileged"] == "1" and "recording" not in rec
    assert 'SET VARIABLE "CALLERID(num)" "anonymous"' in cmds  # no caller_id: withheld


def test_monitoring_a_privileged_call_is_refused_and_audited_before_any_ami(world):
    _, store = world
    records.create(store.r, "20261122101500-0123abcd", facility="main", channel="PJSIP/inmate1-00000001",
                   uniqueid="1.1", privileged="1", outcome="accepted")
    with pytest.raises(StoreError, match="privileged"):
        livecalls.monitor_start(store, ami=None, call_id="20261122101500-0123abcd", by="Det. Ray",
                                phone="investigator1")
    assert [(e["action"], e["by"]) for e in store.audit_entries()] == [("monitor_refused", "Det. Ray")]
