"""Who pays and at what rate, through the FastAGI server against a scripted Asterisk.

The inmate flow (agi/flows/inmate.py) on a real Redis: destination class and tax
decide the rate and the hold, a number that cannot be billed hears how to set up
prepaid, a direct-bill account stops at its monthly limit, and an inmate with
funds of their own may pay from them. Money is integer cents.
"""

from __future__ import annotations


import pytest

from ics import config, keys, rating, records
from ics.store import Store, connect, month_of, now_ms

from .test_flows_scripted import INMATE, NUMBER, PIN, serve_fastagi, ScriptedAsterisk, env_block, fastagi

CELL = "3125550199"
INTL = "011442079460000"  # London, dialled from the US
DEBIT = f"debit-{INMATE}"


@pytest.fixture
def world(redis_url, tmp_path):
    # the scripted Asterisk answers an EXEC (MixMonitor) but has no RTP for ics-recorder
    cfg = config.load(environ={"ICS_REDIS_URL": redis_url, "ICS_SOUNDS_DIR": str(tmp_path),
                               "ICS_RECORDINGS_METHOD": "mixmonitor"})
    store = Store(connect(cfg), cfg)
    store.create_facility("main", "Test Jail", type="jail", adp=200, local_npas="312", state_npas="217",
                          rate_local_cents=5, rate_instate_cents=9, rate_cents_per_min=13, tax_bps=750)
    store.create_inmate(INMATE, "main", "Alex", PIN)
    store.set_name_recorded(INMATE)
    for n in (NUMBER, CELL, "2175550100", "2125550100", INTL):
        store.approve_number(INMATE, n)
    return cfg, store


@pytest.fixture
def port(world):
    yield from serve_fastagi(world)


def run_call(port, store, number, digits=(INMATE, PIN)):
    cmds = fastagi(port, ScriptedAsterisk(digits=digits), env_block("inmate", extension=number))
    call_id = [c for c in cmds if '"ICS_CALL_ID"' in c][0].split('"')[3]
    return cmds, records.get(store.r, call_id)


def dialed(cmds) -> bool:
    return [c for c in cmds if c.startswith('SET VARIABLE "ICS_RESULT"')][-1] == 'SET VARIABLE "ICS_RESULT" "dial"'


def played(cmds, key) -> bool:
    return any(c.startswith(f'STREAM FILE "ics/prompts/{key}"') for c in cmds)


def prepaid(store, aid, numbers, cents=10_000):
    store.create_account(aid, "Sam", numbers)
    store.adjust(aid, "deposit", cents)


@pytest.mark.parametrize("number, cls, rate", [
    (NUMBER, "local", 5), ("2175550100", "instate", 9), ("2125550100", "interstate", 13)])
def test_class_and_tax_set_the_rate_and_the_hold(port, world, number, cls, rate):
    cfg, store = world
    prepaid(store, "fam1", [number])
    cmds, rec = run_call(port, store, number)
    assert dialed(cmds)
    expected = rating.price(rate, 60_000, 750)  # the first minute, 7.5 % tax
    assert (rec["dest_class"], rec["rate_cents"], rec["tax_bps"], rec["limit_s"]) == (cls, rate, 750, 900)
    assert rec["held_cents"] == expected.cents == rate + (rate * 750 + 5000) // 10000
    assert rec["paid_minutes"] == 1 and store.account("fam1").held_cents == expected.cents


def test_international_is_allowed_per_country_at_its_own_rate(port, world):
    cfg, store = world
    prepaid(store, "fam1", [INTL])
    cmds, rec = run_call(port, store, INTL)
    assert not dialed(cmds) and rec["reason"] == "international_not_allowed"
    assert played(cmds, "international-not-allowed")
    assert (rec["number"], rec["dest_kind"], rec["dest_region"]) == ("+442079460000", "fixed_line", "GB")
    # another country listed is not this one
    store.r.hset(keys.facility("main"), "international", "MX:14:1000")
    cmds, rec = run_call(port, store, INTL)
    assert not dialed(cmds) and rec["reason"] == "international_not_allowed"
    # the jail's cap is 13 c/min; GB's termination (1.2 c) lifts it to 14.2: 14 is allowed
    store.r.hset(keys.facility("main"), "international", "MX:14:1000, GB:14:1200")
    cmds, rec = run_call(port, store, INTL)
    assert dialed(cmds) and (rec["dest_class"], rec["rate_cents"]) == ("international", 14)
    assert 'SET VARIABLE "ICS_DIAL" "PJSIP/011442079460000"' in cmds


@pytest.mark.parametrize("number, region", [("8769271234", "JM"), ("4169671111", "CA")])
def test_nanp_numbers_outside_the_us_are_international(port, world, number, region):
    """The issue's case: Jamaica and Toronto are not interstate calls under the domestic caps."""
    cfg, store = world
    store.approve_number(INMATE, number)
    prepaid(store, "fam1", [number])
    cmds, rec = run_call(port, store, number)
    assert not dialed(cmds) and rec["reason"] == "international_not_allowed"
    assert (rec["dest_class"] if "dest_class" in rec else None, rec["dest_region"]) == (None, region)
    store.r.hset(keys.facility("main"), "international", f"{region}:15:4000")
    cmds, rec = run_call(port, store, number)
    assert dialed(cmds) and (rec["dest_class"], rec["rate_cents"]) == ("international", 15)
    assert f'SET VARIABLE "ICS_DIAL" "PJSIP/{number}"' in cmds  # inside the NANP: 10 digits


def test_wireless_without_prepaid_needs_prepaid(port, world):
    cfg, store = world
    store.set_lidb(CELL, "wireless")
    cmds, rec = run_call(port, store, CELL)  # no account at all
    assert not dialed(cmds) and rec["reason"] == "needs_prepaid" and played(cmds, "needs-prepaid")
    prepaid(store, "fam1", [CELL])  # a prepaid account pays for a wireless line
    cmds, rec = run_call(port, store, CELL)
    assert dialed(cmds) and rec["account"] == "fam1"


@pytest.mark.parametrize("lidb", [dict(line_type="wireless"), dict(line_type="voip"),
                                  dict(line_type="landline", collect_block=True),
                                  dict(line_type="landline", new_number=True)])
def test_direct_bill_to_a_number_that_became_unbillable_needs_prepaid(port, world, lidb):
    cfg, store = world
    store.create_account("db1", "Sam", [NUMBER], "direct_bill", monthly_limit_cents=5000)
    store.set_lidb(NUMBER, **lidb)  # changed after the account was opened
    cmds, rec = run_call(port, store, NUMBER)
    assert not dialed(cmds) and rec["reason"] == "needs_prepaid"
    assert store.account("db1").held_cents == 0


def test_direct_bill_stops_at_the_monthly_limit(clock, port, world):
    cfg, store = world
    store.create_account("db1", "Sam", [NUMBER], "direct_bill", monthly_limit_cents=1000)
    month = keys.account_month("db1", month_of(clock()))
    one_minute = rating.price(5, 60_000, 750).cents  # 5 + 0.375 -> 5 cents
    store.r.set(month, 1000 - one_minute + 1)  # the month's total + one minute > limit
    cmds, rec = run_call(port, store, NUMBER)
    assert not dialed(cmds) and rec["reason"] == "direct_bill_limit" and played(cmds, "direct-bill-limit")
    three = rating.price(5, 180_000, 750).cents  # 15 + 1.125 -> 16 (tax once on the total)
    store.r.set(month, 1000 - three)  # three minutes left: the limit and hold come from what remains
    cmds, rec = run_call(port, store, NUMBER)
    assert dialed(cmds) and rec["limit_s"] == 180 and three == 16
    assert rec["held_cents"] == one_minute and rec["paid_minutes"] == 1  # the rest minute by minute


@pytest.mark.parametrize("key, payer", [("1", DEBIT), ("2", "fam1"), ("", "fam1")])
def test_inmate_chooses_to_pay_from_their_own_account(port, world, key, payer):
    cfg, store = world
    prepaid(store, "fam1", [NUMBER])
    store.create_account(DEBIT, "Alex", [], "inmate_debit", inmate=INMATE)
    store.adjust(DEBIT, "deposit", 300)
    cmds, rec = run_call(port, store, NUMBER, digits=(INMATE, PIN, key))
    assert played_choice(cmds) and dialed(cmds)
    assert rec["account"] == payer and store.account(payer).held_cents == rec["held_cents"] > 0
    other = "fam1" if payer == DEBIT else DEBIT
    assert store.account(other).held_cents == 0


def test_debit_choice_lets_the_inmate_call_a_number_that_cannot_be_billed(port, world):
    cfg, store = world
    store.set_lidb(CELL, "voip")
    store.create_account(DEBIT, "Alex", [], "inmate_debit", inmate=INMATE)
    store.adjust(DEBIT, "deposit", 21)  # 3 minutes: 15 + 1 tax = 16; 4 would be 20 + 2 = 22
    cmds, rec = run_call(port, store, CELL, digits=(INMATE, PIN, "1"))
    assert dialed(cmds) and rec["account"] == DEBIT
    assert rec["limit_s"] == 180 and rec["held_cents"] == rating.price(5, 60_000, 750).cents == 5


def test_no_choice_without_funds_for_a_minute(port, world):
    cfg, store = world
    prepaid(store, "fam1", [NUMBER])
    store.create_account(DEBIT, "Alex", [], "inmate_debit", inmate=INMATE)
    store.adjust(DEBIT, "deposit", 4)  # under one minute at 5 cents
    cmds, rec = run_call(port, store, NUMBER)
    assert not played_choice(cmds) and dialed(cmds) and rec["account"] == "fam1"


@pytest.mark.parametrize("cents", [10_000, 0])
def test_an_expired_prepaid_account_refuses_the_call(port, world, cents):
    """README: an account flagged expired refuses calls (account_expired, its own prompt),
    whatever its balance, and holds nothing; a deposit reactivates it."""
    cfg, store = world
    store.create_account("fam1", "Sam", [NUMBER])
    if cents:
        store.adjust("fam1", "deposit", cents)
    store.r.hset(keys.account("fam1"), "expired_ms", now_ms())  # as `icsctl accounts expire` flags it
    cmds, rec = run_call(port, store, NUMBER)
    assert not dialed(cmds) and rec["reason"] == "account_expired" and played(cmds, "account-expired")
    assert store.account("fam1").held_cents == 0 and not rec.get("held_cents")
    store.adjust("fam1", "deposit", 500)
    cmds, rec = run_call(port, store, NUMBER)
    assert dialed(cmds) and rec["account"] == "fam1"


def played_choice(cmds) -> bool:
    return any(c.startswith('GET DATA "ics/prompts/pay-choice"') for c in cmds)


class CalledParty(ScriptedAsterisk):
    """The called phone: presses a digit while the first prompt naming each fragment plays."""

    def __init__(self, presses):
        super().__init__()
        self.presses = list(presses)  # (prompt fragment, digit), in order

    def reply(self, cmd: str) -> bytes:
        if cmd.startswith("STREAM FILE") and self.presses and self.presses[0][0] in cmd:
            return f"200 result={ord(self.presses.pop(0)[1])} endpos=800\n".encode()
        return super().reply(cmd)


def quote_then_accept(port, call_id):
    script = CalledParty([("announce-from", "3"), ("menu-accept", "1")])
    return fastagi(port, script, env_block("callee", [call_id]))


def said_rate(cmds) -> int:
    said = [c for c in cmds if c.startswith("SAY NUMBER")]
    assert len(said) == 1, said  # under a dollar: one number, the cents
    return int(said[0].split('"')[1])


@pytest.mark.parametrize("number, rate", [(NUMBER, 5), ("2175550100", 9), ("2125550100", 13)])
def test_quote_is_the_calls_class_rate_and_the_bill_matches_it(port, world, number, rate):
    cfg, store = world  # rate_cents_per_min is 13: a local or in-state call must not be quoted that
    prepaid(store, "fam1", [number])
    _, rec = run_call(port, store, number)
    cmds = quote_then_accept(port, rec["call_id"])
    assert said_rate(cmds) == rating.quote(rate).cents == rate
    assert played(cmds, "rate-per-minute") and played(cmds, "rate-taxes")  # tax_bps 750
    assert played(cmds, "rate-is") and not played(cmds, "rate-international")  # a domestic call
    assert 'SET VARIABLE "GOSUB_RESULT" ""' in cmds  # accepted after the quote
    # a normal end, said last: a fault before it is never bridged ([ics-callee])
    assert cmds.index('SET VARIABLE "ICS_MENU_DONE" "1"') > cmds.index('SET VARIABLE "GOSUB_RESULT" ""')
    # one bridged minute: the bill is the quoted per-minute rate plus 7.5 % tax, nothing else
    records.update(store.r, rec["call_id"], bridged_ms=now_ms() - 30_000)
    fastagi(port, ScriptedAsterisk(), env_block("settle", [rec["call_id"], "ANSWER", ""]))
    billed = records.get(store.r, rec["call_id"])
    expected = rating.price(rate, 60_000, 750)
    assert (billed["billed_minutes"], billed["billed_cents"], billed["tax_cents"]) == \
        (1, expected.cents, expected.tax_cents)
    assert billed["billed_cents"] == said_rate(cmds) + rating.tax_cents(said_rate(cmds), 750)
    assert store.account("fam1").balance_cents == 10_000 - expected.cents
    assert store.account("fam1").held_cents == 0


def test_quote_without_tax_does_not_mention_taxes(port, world):
    cfg, store = world
    store.r.hset(keys.facility("main"), "tax_bps", 0)
    prepaid(store, "fam1", [NUMBER])
    _, rec = run_call(port, store, NUMBER)
    cmds = quote_then_accept(port, rec["call_id"])
    assert said_rate(cmds) == 5 and played(cmds, "rate-per-minute") and played(cmds, "rate-whole-minutes")
    assert not played(cmds, "rate-taxes")


def test_quote_over_a_dollar_says_dollars_and_cents(port, world):
    cfg, store = world
    # a country whose termination costs $1.12 a minute: cap 13 c + 112 c
    store.r.hset(keys.facility("main"), "international", "GB:125:112000")
    prepaid(store, "fam1", [INTL])
    _, rec = run_call(port, store, INTL)
    cmds = quote_then_accept(port, rec["call_id"])
    assert [c.split('"')[1] for c in cmds if c.startswith("SAY NUMBER")] == ["1", "25"]
    assert played(cmds, "rate-dollars")
    # the quote says it is an international call and reads that country's rate
    assert played(cmds, "rate-international") and not played(cmds, "rate-is")


def test_a_call_without_a_rate_is_not_quoted_and_not_connected(port, world):
    cfg, store = world
    prepaid(store, "fam1", [NUMBER])
    _, rec = run_call(port, store, NUMBER)
    store.r.hdel(keys.call(rec["call_id"]), "rate_cents")  # a damaged record: fail closed
    cmds = quote_then_accept(port, rec["call_id"])
    assert not any(c.startswith("SAY NUMBER") for c in cmds)
    assert 'SET VARIABLE "GOSUB_RESULT" ""' not in cmds
    # a menu fault: no ICS_MENU_DONE, and no Goto out of the gosub ([ics-callee] tells both parties)
    assert 'SET VARIABLE "ICS_MENU_DONE" "1"' not in cmds
    assert not any(c.startswith("SET CONTEXT") for c in cmds)


def test_a_call_cut_at_its_limit_bills_exactly_the_held_minutes_with_tax(port, world):
    cfg, store = world
    prepaid(store, "fam1", [NUMBER], cents=21)  # 3 minutes at 5 c + 7.5 %: 15 + 1 = 16; 4 would be 22
    _, rec = run_call(port, store, NUMBER)
    assert (rec["limit_s"], rec["held_cents"]) == (180, 5)
    # the listener held minutes 2 and 3 before they started (the tax rounds on the total)
    for paid, cents in ((1, 5), (2, 6)):
        assert store.extend_hold("fam1", rec["call_id"], cents, paid) == "held"
    assert store.extend_hold("fam1", rec["call_id"], 22 - 16, 3) == "short"  # a 4th minute: 22 in all, 5 left
    # the hangup handler runs a little after the cut at 180 s
    records.update(store.r, rec["call_id"], bridged_ms=now_ms() - 180_700)
    fastagi(port, ScriptedAsterisk(), env_block("settle", [rec["call_id"], "ANSWER", ""]))
    billed = records.get(store.r, rec["call_id"])
    assert billed["reason"] == "time_limit"
    assert (billed["billed_minutes"], billed["billed_cents"], billed["tax_cents"]) == (3, 16, 1)
    acct = store.account("fam1")
    assert (acct.balance_cents, acct.held_cents) == (5, 0)
