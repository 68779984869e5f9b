"""Every place a number enters, on a real Redis: icsctl arguments, the dialled extension,
the facility caller ID and approved-list requests take any text and give either a
Destination (stored once, in E.164) or a clear refusal; never another exception, never one
number in two spellings. Also: the migration of numbers stored before E.164, and the LIDB
fallback by number type."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agi.flows.inmate import Refused, destination_refused, dial_string, dialled
from ics import config, destination, keys, records
from ics.config import DEFAULTS, ConfigError, facility_settings
from ics.destination import Destination, e164
from ics.store import StoreError

from .test_cli import INMATE, NUMBER, one_line_error, run, sounds  # noqa: F401 (fixtures)
from .test_cli import world as cli_world  # noqa: F401 (fixture)
from .test_flows_billing import dialed, port, run_call  # noqa: F401 (fixture)
from .test_flows_scripted import make_world

# text people and attackers type: digits of every script, separators, newlines, letters, long runs
numberish = st.text(alphabet=st.sampled_from("0123456789 ()-.+*#\n\r\t１２３٣x&;,\0"), max_size=30)
anything = st.one_of(st.text(max_size=300), numberish,
                     st.from_regex(r"\A(\+|011|1)?[0-9 ()\-.]{3,20}\Z"),
                     st.from_regex(r"\A[2-9][0-9]{2}[2-9][0-9]{6}\Z"),
                     st.sampled_from(["3125550100", "(312) 555-0100", "+1 312 555 0100", "011 44 20 7946 0000",
                                      "01118005551234", "01119005551234", "3120550100", "911", "411"]))
FIXTURES = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def world(redis_url, tmp_path):
    return make_world(redis_url, tmp_path)


def one_spelling_each(store) -> None:
    """Every stored number is the E.164 of itself (so no number is kept in two spellings)."""
    stored = list(store.number_states(INMATE)) + list(store.privileged_numbers())
    stored += store.blocked_numbers(inmate=INMATE) + store.account_numbers("fam1")
    stored += [k.removeprefix("ics:number:") for k in store.r.scan_iter("ics:number:*")]
    for n in stored:
        assert e164(n) == n, n


# --- the dialled extension (the inmate flow's pure steps) ---------------------------------------

@settings(max_examples=3000, deadline=None)
@given(anything)
def test_any_dialled_extension_is_a_destination_or_a_refusal_with_a_prompt(text):
    facility = {"emergency_routed": False}
    d = dialled(text)
    refusal = destination_refused(d, facility)
    if refusal is not None:
        assert isinstance(refusal, Refused) and refusal.reason and refusal.prompt
        return
    assert isinstance(d, Destination) and not d.short
    # what reaches Dial() is digits (and the + of E.164): no "&" can add a target
    assert dial_string("PJSIP/{number}", d)[6:].isdigit()
    assert dial_string("PJSIP/{e164}@carrier", d) == f"PJSIP/{d.e164}@carrier"


@FIXTURES
@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"]), max_size=40)
       | st.sampled_from(["01118005551234", "01119005551234", "3120550100", "8769271234", "911", "+1 312 555 0100"]))
def test_the_inmate_flow_refuses_any_extension_with_a_prompt_never_silence(port, world, text):  # noqa: F811
    _, store = world
    cmds, rec = run_call(port, store, text)
    assert not any("ics-fail" in c for c in cmds)
    if dialed(cmds):
        assert rec["number"] == "+13125550100"  # the one approved number, however it was dialled
    else:
        assert rec["reason"] and any(c.startswith('STREAM FILE "ics/prompts/') for c in cmds)
        assert (rec["number"] == "invalid" or rec["dest_kind"] in ("short_code", "emergency")
                or rec["number"] == e164(rec["number"]))


# --- approved-list requests, blocks, privileged and account numbers in the store ----------------

@FIXTURES
@given(anything)
def test_any_request_is_stored_once_in_e164_or_refused(world, text):
    _, store = world
    for action in (lambda: store.set_number_state(INMATE, text, "pending"),
                   lambda: store.block(text, inmate=INMATE),
                   lambda: store.set_privileged(text, "Attorney")):
        try:
            action()
        except StoreError as exc:
            assert str(exc)
    one_spelling_each(store)


def test_the_same_number_typed_three_ways_is_one_entry(world):
    _, store = world
    for typed in ("3125550101", "(312) 555-0101", "+1 312 555 0101"):
        store.set_number_state(INMATE, typed, "pending")
        store.block(typed, inmate=INMATE)
    assert store.number_states(INMATE) == {"+13125550100": "approved", "+13125550101": "pending"}
    assert store.blocked_numbers(inmate=INMATE) == ["+13125550101"]
    assert store.block_reason(INMATE, "main", "312.555.0101") == "blocked_inmate"


# --- the facility caller ID ----------------------------------------------------------------------

@settings(max_examples=1500, deadline=None)
@given(anything)
def test_any_caller_id_setting_is_accepted_as_a_us_number_or_refused_naming_it(text):
    try:
        merged = facility_settings(DEFAULTS["facility_defaults"], {"caller_id": text}, "facility t")
    except ConfigError as exc:
        assert "caller_id" in str(exc)
        return
    if merged["caller_id"]:
        d = destination.parse(merged["caller_id"])
        assert d.domestic and d.dial.isdigit()


# --- icsctl arguments ----------------------------------------------------------------------------

@settings(FIXTURES, max_examples=150)  # five icsctl commands an example
@given(anything.filter(lambda t: not t.startswith("-") and "\0" not in t))
def test_any_icsctl_number_argument_is_done_or_one_line_of_error(run, cli_world, text):  # noqa: F811
    for argv in (("inmate", "request", INMATE, text), ("block", "add", text, "--inmate", INMATE),
                 ("privileged", "add", text, "--note", "Attorney"), ("lidb", "show", text),
                 ("numbers", "check", text, "--facility", "main")):
        status, out, err = run(*argv)
        if status == 0:
            continue
        assert status == 1, (argv, err)
        line = [ln for ln in err.splitlines() if not ln.startswith("{")]
        assert len(line) == 1 and "Traceback" not in err, err
    one_spelling_each(cli_world)


def test_icsctl_accepts_what_people_type_and_shows_e164(run, cli_world):  # noqa: F811
    status, out, _ = run("inmate", "approve", INMATE, "011 44 20 7946 0000")
    assert status == 0 and "approved +442079460000" in out
    status, out, _ = run("numbers", "check", "(876) 927-1234")
    assert status == 0 and "+18769271234" in out and "JM (international)" in out
    status, _, err = run("inmate", "approve", INMATE, "3120550100")
    assert status == 1
    one_line_error(err, "no such area code or exchange")
    status, _, err = run("inmate", "approve", INMATE, "01118005551234")
    assert status == 1
    one_line_error(err, "+18005551234 cannot be approved: Toll-free")


# --- numbers stored before E.164 -----------------------------------------------------------------

def test_numbers_stored_before_e164_are_migrated_once_and_found(world):
    cfg, store = world
    r = store.r
    # what the previous version wrote: 10 digits and 011 forms, in every place a number lives
    r.hset(keys.approved(INMATE), mapping={"3125550101": "approved", "011442079460000": "pending",
                                          "+13125550100": "approved", "3125550100": "pending",
                                          "not a number": "approved"})
    r.hset(keys.PRIVILEGED, "3125550109", "Attorney")
    r.sadd(keys.block_inmate(INMATE), "3125550102")
    r.sadd(keys.block_facility("main"), "8765551234")
    r.sadd(keys.account_numbers("old"), "3125550103")
    r.set(keys.number_account("3125550103"), "old")
    r.hset(keys.lidb("3125550104"), mapping={"line_type": "wireless"})
    done = store.migrate_numbers()
    assert sorted(done["unreadable"]) == ["not a number"]
    assert len(done["kept_existing"]) == 1  # 3125550100 was already there as +13125550100: that one stays
    assert store.number_states(INMATE) == {"+13125550100": "approved", "+13125550101": "approved",
                                           "+442079460000": "pending", "not a number": "approved"}
    assert store.is_approved(INMATE, "3125550101") and store.privileged("3125550109") == "Attorney"
    assert store.block_reason(INMATE, "main", "3125550102") == "blocked_inmate"
    assert store.block_reason(INMATE, "main", "+18765551234") == "blocked_facility"
    assert store.account_numbers("old") == ["+13125550103"]
    assert r.get(keys.number_account("+13125550103")) == "old" and not r.exists(keys.number_account("3125550103"))
    assert store.lidb("3125550104")["line_type"] == "wireless"
    again = store.migrate_numbers()  # idempotent
    assert (again["migrated"], again["kept_existing"]) == ([], [])


def test_icsctl_numbers_migrate_lists_what_it_did(run, cli_world):  # noqa: F811
    cli_world.r.sadd(keys.block_inmate(INMATE), "3125550102", "junk")
    status, out, _ = run("numbers", "migrate")
    assert status == 0 and "migrated      ics:block:inmate:123456 3125550102 -> +13125550102" in out
    assert "unreadable    'junk'" in out and "1 migrated, 0 already in E.164, 1 unreadable" in out
    assert run("numbers", "migrate")[1].startswith("unreadable")  # nothing left to migrate
    assert cli_world.blocked_numbers(inmate=INMATE) == ["+13125550102", "junk"]


# --- the LIDB fallback by number type ------------------------------------------------------------

def test_a_number_not_in_the_line_table_takes_its_line_type_from_its_number_type(world):
    _, store = world
    assert store.lidb("8765551234")["line_type"] == "wireless"   # a Jamaican mobile
    assert store.lidb("8769271234")["line_type"] == "landline"   # a Jamaican fixed line
    assert store.lidb(NUMBER)["line_type"] == "landline"         # US numbers do not say: landline
    assert "wireless" in store.collect_problem("8765551234")
    with pytest.raises(StoreError, match="wireless"):
        store.create_account("jm", "Kim", ["8765551234"], "direct_bill", monthly_limit_cents=5000)
    store.set_lidb("8765551234", "landline")  # the table wins over the number type
    assert store.collect_problem("8765551234") is None
    with pytest.raises(StoreError, match=r"\+1\) numbers only"):
        store.set_lidb("+44 20 7946 0000", "landline")


def test_a_call_record_keeps_the_number_once_in_e164(port, world):  # noqa: F811
    _, store = world
    cmds, rec = run_call(port, store, "13125550100")  # 1 + 10 digits: the same number
    assert dialed(cmds) and rec["number"] == "+13125550100" and rec["dest_kind"] == "fixed_line_or_mobile"
    assert 'SET VARIABLE "ICS_DIAL" "PJSIP/3125550100"' in cmds  # the lab endpoint's name
    assert records.get(store.r, rec["call_id"])["dest_region"] == "US"


def test_dial_template_placeholders_and_the_removed_international_key(tmp_path):
    assert config.load(environ={"ICS_DIAL_TEMPLATE": "PJSIP/{e164}@carrier"})["dial"]["template"]
    with pytest.raises(ConfigError, match="only {number} and {e164}"):
        config.load(environ={"ICS_DIAL_TEMPLATE": "PJSIP/{number}@{trunk}"})
    old = tmp_path / "ics.toml"
    old.write_text("[facility_defaults]\nrate_international_cents = 40\n")
    with pytest.raises(ConfigError, match="replaced by international"):
        config.load(path=str(old), environ={})
