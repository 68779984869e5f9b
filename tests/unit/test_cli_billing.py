"""icsctl for account types and the LIDB table, on a real Redis (money in integer cents)."""

from __future__ import annotations

import json

from ics.destination import e164
from ics import keys

from .test_cli import INMATE, NUMBER, PIN, events, one_line_error, run, sounds  # noqa: F401 (fixtures)

CELL = "3125550199"


def test_lidb_set_and_show(run, store):
    status, out, _ = run("lidb", "show", NUMBER, "--json")
    assert status == 0 and json.loads(out) == {"number": e164(NUMBER), "known": False, "line_type": "landline",
                                               "collect_block": False, "new_number": False,
                                               "collect_billable": True}
    status, out, err = run("lidb", "set", CELL, "--line-type", "wireless")
    assert status == 0 and "prepaid only" in out
    assert events(err)[0]["event"] == "ops.lidb_set"
    status, out, _ = run("lidb", "show", CELL)
    assert "wireless" in out and "no: +13125550199 is a wireless line; prepaid only" in out
    run("lidb", "set", NUMBER, "--line-type", "landline", "--collect-block", "--new-number")
    doc = json.loads(run("lidb", "show", NUMBER, "--json")[1])
    assert doc["collect_block"] and doc["new_number"] and not doc["collect_billable"]
    status, _, err = run("lidb", "set", "123", "--line-type", "landline")
    assert status == 1
    one_line_error(err, "invalid number: 123 is a short code")
    assert run("lidb", "set", NUMBER, "--line-type", "fax")[0] == 2


def test_direct_bill_create_refuses_wireless_and_needs_a_limit(run, store):
    run("lidb", "set", CELL, "--line-type", "voip")
    status, _, err = run("account", "create", "db1", "--type", "direct_bill", "--owner", "Sam",
                         "--number", CELL, "--monthly-limit-cents", "5000")
    assert status == 1
    one_line_error(err, "direct bill needs a landline that accepts collect calls: +13125550199 is a voip line")
    status, _, err = run("account", "create", "db1", "--type", "direct_bill", "--owner", "Sam", "--number", NUMBER)
    assert status == 1
    one_line_error(err, "needs a monthly limit")
    assert not store.r.exists(keys.account("db1"))
    status, out, _ = run("account", "create", "db1", "--type", "direct_bill", "--owner", "Sam",
                         "--number", NUMBER, "--monthly-limit-cents", "5000")
    assert status == 0 and "monthly limit $50.00" in out
    doc = json.loads(run("account", "show", "db1", "--json")[1])
    assert (doc["type"], doc["monthly_limit_cents"], doc["month_billed_cents"], doc["available_cents"]) == \
        ("direct_bill", 5000, 0, 5000)


def test_inmate_debit_create_and_fund(run, store):
    assert run("facility", "create", "main", "--name", "Main", "--no-audio")[0] == 0
    assert run("inmate", "create", INMATE, "--facility", "main", "--name", "Alex Doe", "--pin", PIN)[0] == 0
    status, _, err = run("account", "create", "debit-123456", "--type", "inmate_debit")
    assert status == 1
    one_line_error(err, "needs --inmate")
    status, out, _ = run("account", "create", "debit-123456", "--type", "inmate_debit", "--inmate", INMATE)
    assert status == 0 and "account fund debit-123456" in out
    assert run("account", "fund", "debit-123456", "--amount", "12.34")[0] == 0
    doc = json.loads(run("account", "show", "debit-123456", "--json")[1])
    assert (doc["owner"], doc["inmate"], doc["balance_cents"]) == ("Alex Doe", INMATE, 1234)  # no fee taken


def test_prepaid_still_needs_owner_and_a_number(run, store):
    status, _, err = run("account", "create", "fam1", "--owner", "Sam")
    assert status == 1
    one_line_error(err, "needs at least one --number")
    status, _, err = run("account", "create", "fam1", "--number", NUMBER)
    assert status == 1
    one_line_error(err, "account owner must be non-empty")
