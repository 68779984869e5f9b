"""icsctl against a real Redis: what it writes, what it prints, how it fails.

Commands run in-process (ics.cli.main with capsys); one test runs the installed
console script to prove the entry point works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import structlog

from ics.destination import e164
from ics import cli, keys, records
from ics.store import Store, StoreError

INMATE, PIN, NUMBER, OTHER = "123456", "4321", "3125550100", "3125550101"
ICSCTL = Path(sys.executable).parent / "icsctl"


@pytest.fixture
def sounds(tmp_path) -> Path:
    return tmp_path / "sounds"


@pytest.fixture
def run(redis_url, sounds, monkeypatch, capsys):
    """run(*argv) -> (status, stdout, stderr) of one icsctl command."""
    monkeypatch.delenv("ICS_CONFIG", raising=False)
    monkeypatch.setenv("ICS_REDIS_URL", redis_url)
    monkeypatch.setenv("ICS_SOUNDS_DIR", str(sounds))
    monkeypatch.setenv("ICS_LOG_FORMAT", "json")

    def go(*argv: str):
        capsys.readouterr()
        status = cli.main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    yield go
    structlog.reset_defaults()  # main() configured structlog onto capsys' stream


def events(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def one_line_error(err: str, expected: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err


@pytest.fixture
def world(run, store: Store):
    """A facility, an inmate with one approved number and a funded account, made by icsctl."""
    assert run("facility", "create", "main", "--name", "Cook County Jail", "--no-audio")[0] == 0
    assert run("inmate", "create", INMATE, "--facility", "main", "--name", "Alex Doe", "--pin", PIN)[0] == 0
    assert run("inmate", "approve", INMATE, NUMBER)[0] == 0
    assert run("account", "create", "fam1", "--owner", "Sam Doe", "--number", NUMBER)[0] == 0
    return store


# --- facilities ----------------------------------------------------------------------

def test_facility_create_stores_overrides_and_says_audio_was_skipped(run, store, sounds):
    status, out, err = run("facility", "create", "cook", "--name", "Cook County Jail", "--no-audio",
                           "--accept-digit", "5", "--rate-cents-per-min", "15", "--time-limit-s", "1200",
                           "--type", "jail", "--adp", "60", "--local-npas", "312,773", "--tax-bps", "0")
    assert status == 0
    assert store.r.sismember(keys.FACILITIES, "cook")
    assert store.r.hgetall(keys.facility("cook")) == {
        "name": "Cook County Jail", "accept_digit": "5", "rate_cents_per_min": "15", "time_limit_s": "1200",
        "type": "jail", "adp": "60", "local_npas": "312,773", "tax_bps": "0"}
    assert "created facility cook" in out and "NOT rendered (--no-audio)" in out
    assert not (sounds / "facilities" / "cook.wav").exists()
    [event] = events(err)
    assert event["event"] == "ops.facility_create" and event["facility"] == "cook"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_facility_create_renders_the_spoken_name(run, sounds):
    status, out, _ = run("facility", "create", "main", "--name", "Cook County Jail")
    assert status == 0
    wav = sounds / "facilities" / "main.wav"
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getnframes() > 8000 * 0.5
    assert str(wav) in out


def test_facility_show_json_is_the_effective_settings(run):
    run("facility", "create", "main", "--name", "Main", "--no-audio", "--rate-cents-per-min", "9")
    status, out, _ = run("facility", "show", "main", "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["rate_cents_per_min"] == 9 and doc["time_limit_s"] == 900 and doc["accept_digit"] == "1"
    assert doc["overridden"] == ["rate_cents_per_min"] and doc["name_audio"] is None
    status, out, _ = run("facility", "show", "main")
    assert "$0.09/min  (facility)" in out and "900 s  (default)" in out
    assert "rate international   not allowed" in out and "$0.11/min (facility cost 0 c/min)" in out
    status, out, _ = run("facility", "list", "--json")
    assert [f["id"] for f in json.loads(out)["facilities"]] == ["main"]


@pytest.mark.parametrize("argv, message", [
    (["--accept-digit", "2"], "digits must differ"),
    (["--accept-digit", "12"], "one keypad key"),
    (["--time-limit-s", "30"], "at least 60"),
    (["--pin-max-tries", "5", "--pin-lock-after", "3"], "pin_lock_after must be >= pin_max_tries"),
    (["--rate-cents-per-min", "12"], "rate_cents_per_min 12 is above the FCC cap of 11 cents/min (11 for a prison"),
    (["--type", "jail", "--adp", "400", "--rate-instate-cents", "13"],
     "rate_instate_cents 13 is above the FCC cap of 12 cents/min (12 for a jail with average daily population 400"),
    (["--facility-cost-cents", "3"], "facility_cost_cents is at most 2"),
])
def test_bad_facility_settings_create_nothing(run, store, argv, message):
    status, out, err = run("facility", "create", "main", "--name", "Main", "--no-audio", *argv)
    assert status == 1 and out == ""
    one_line_error(err, message)
    assert not store.r.exists(keys.facility("main"))


def test_facility_create_refuses_an_existing_facility(run, store):
    run("facility", "create", "main", "--name", "Main", "--no-audio")
    status, _, err = run("facility", "create", "main", "--name", "Other", "--no-audio")
    assert status == 1
    one_line_error(err, "facility main already exists")
    assert store.r.hget(keys.facility("main"), "name") == "Main"


# --- inmates -------------------------------------------------------------------------

def test_inmate_at_an_unknown_facility_is_refused(run, store):
    status, out, err = run("inmate", "create", INMATE, "--facility", "nope", "--name", "Alex", "--pin", PIN)
    assert status == 1 and out == ""
    one_line_error(err, "icsctl: no facility 'nope'")
    assert not store.r.exists(keys.inmate(INMATE))


def test_inmate_create_and_show_never_reveal_the_pin(run, world):
    inmate = world.inmate(INMATE)
    assert inmate["facility"] == "main" and inmate["name"] == "Alex Doe" and inmate["pin_locked"] == "0"
    assert world.check_pin(inmate, PIN) and not world.check_pin(inmate, "0000")
    status, out, _ = run("inmate", "show", INMATE, "--json")
    assert status == 0
    doc = json.loads(out)
    assert doc["facility"] == "main" and doc["approved_numbers"] == [e164(NUMBER)] and doc["pin_locked"] is False
    assert "pin_hash" not in doc and "pin_salt" not in doc
    _, text, _ = run("inmate", "show", INMATE)
    for secret in (inmate["pin_hash"], inmate["pin_salt"]):
        assert secret not in out and secret not in text


def test_creating_an_existing_inmate_is_refused_unless_replace(run, world):
    """The store refuses a second create (not only the CLI): the PIN is never replaced by
    accident. --replace sets a new PIN (and name) on purpose."""
    before = world.inmate(INMATE)
    with pytest.raises(StoreError, match="already exists"):
        world.create_inmate(INMATE, "main", "Someone Else", "9999")
    assert world.inmate(INMATE) == before
    status, out, err = run("inmate", "create", INMATE, "--facility", "main", "--name", "X", "--pin", "9999")
    assert status == 1 and out == ""
    one_line_error(err, f"inmate {INMATE} already exists (--replace to replace its PIN and name)")
    assert world.inmate(INMATE) == before and world.check_pin(world.inmate(INMATE), PIN)
    status, out, _ = run("inmate", "create", INMATE, "--facility", "main", "--name", "Alex Q Doe",
                         "--pin", "9999", "--replace")
    assert status == 0 and "replaced" in out
    inmate = world.inmate(INMATE)
    assert world.check_pin(inmate, "9999") and not world.check_pin(inmate, PIN) and inmate["name"] == "Alex Q Doe"
    assert world.number_state(INMATE, NUMBER) == "approved"  # the rest of the inmate is kept


def test_missing_inmate_is_one_line_and_status_1(run, world):
    for argv in (["inmate", "show", "1234"], ["inmate", "unlock", "1234"], ["inmate", "numbers", "1234"],
                 ["inmate", "approve", "1234", NUMBER], ["block", "add", NUMBER, "--inmate", "1234"]):
        status, out, err = run(*argv)
        assert status == 1 and out == ""
        one_line_error(err, "no such inmate 1234")


def test_inmate_unlock_clears_the_lock_and_the_count(run, world):
    assert not world.pin_failed(INMATE, 2)
    assert world.pin_failed(INMATE, 2)
    assert json.loads(run("inmate", "show", INMATE, "--json")[1])["pin_locked"] is True
    status, out, err = run("inmate", "unlock", INMATE)
    assert status == 0 and "was locked" in out
    assert world.inmate(INMATE)["pin_locked"] == "0" and world.pin_failure_count(INMATE) == 0
    assert events(err)[0]["event"] == "ops.inmate_unlock"


def test_inmate_import_name_converts_and_marks_recorded(run, world, sounds, tmp_path):
    src = tmp_path / "name.wav"
    with wave.open(str(src), "wb") as w:  # 1 s of 44.1 kHz stereo: must come out 8 kHz mono
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\x01\x00" * 2 * 44100)
    status, out, _ = run("inmate", "import-name", INMATE, str(src))
    assert status == 0
    with wave.open(str(sounds / "names" / f"{INMATE}.wav")) as w:
        assert (w.getframerate(), w.getnchannels()) == (8000, 1)
    assert world.inmate(INMATE)["name_recorded"] == "1"

    status, _, err = run("inmate", "import-name", INMATE, str(tmp_path / "missing.wav"))
    assert status == 1
    one_line_error(err, "no such file")
    bad = tmp_path / "bad.wav"
    bad.write_text("not a wave file\n")
    status, _, err = run("inmate", "import-name", INMATE, str(bad))
    assert status == 1
    one_line_error(err, "cannot read")


def test_approve_rejects_bad_numbers_and_numbers_shows_blocks_and_accounts(run, world):
    status, _, err = run("inmate", "approve", INMATE, "1125550100")
    assert status == 1
    one_line_error(err, "invalid number: '1125550100' is not a number in use")
    assert run("inmate", "approve", INMATE, OTHER)[0] == 0
    assert world.is_approved(INMATE, OTHER)
    run("block", "add", OTHER, "--facility", "main")
    doc = json.loads(run("inmate", "numbers", INMATE, "--json")[1])
    assert doc["numbers"] == [
        {"number": e164(NUMBER), "approval": "approved", "privileged": False, "blocked": None, "account": "fam1",
         "available_cents": 0},
        {"number": e164(OTHER), "approval": "approved", "privileged": False, "blocked": "blocked_facility",
         "account": None, "available_cents": None},
    ]


# --- blocks --------------------------------------------------------------------------

def test_block_add_list_remove(run, world):
    status, _, err = run("block", "add", NUMBER, "--inmate", INMATE)
    assert status == 0 and events(err)[0]["event"] == "ops.block_add"
    assert world.block_reason(INMATE, "main", NUMBER) == "blocked_inmate"
    assert json.loads(run("block", "list", "--inmate", INMATE, "--json")[1]) == {
        "inmate": INMATE, "numbers": [e164(NUMBER)]}
    assert run("block", "remove", NUMBER, "--inmate", INMATE)[0] == 0
    assert world.block_reason(INMATE, "main", NUMBER) is None
    status, _, err = run("block", "remove", NUMBER, "--inmate", INMATE)
    assert status == 1
    one_line_error(err, f"{e164(NUMBER)} is not blocked for inmate {INMATE}")
    status, _, err = run("block", "add", NUMBER, "--facility", "nope")
    assert status == 1
    one_line_error(err, "no such facility nope")


# --- accounts and money --------------------------------------------------------------

@pytest.mark.parametrize("flag, value, message", [
    ("--amount", "12.345", "fraction of a cent"),
    ("--amount", "-5", "must be positive"),
    ("--amount", "0", "more than zero"),
    ("--amount", "0.00", "more than zero"),
    ("--amount", "abc", "dollars such as 12.34"),
    ("--amount", "1e3", "dollars such as 12.34"),
    ("--amount", "NaN", "dollars such as 12.34"),
    ("--cents", "2.5", "whole number of cents"),
    ("--cents", "-100", "must be positive"),
    ("--cents", "0", "more than zero"),
    ("--cents", "99999999999999999999999", "limit for one deposit"),
])
def test_bad_amounts_are_rejected_and_move_no_money(run, world, flag, value, message):
    status, out, err = run("account", "fund", "fam1", flag, value)
    assert status == 1 and out == ""
    one_line_error(err, message)
    assert world.account("fam1").balance_cents == 0
    assert world.ledger("fam1") == []


def test_fund_show_and_ledger(run, world):
    status, out, err = run("account", "fund", "fam1", "--amount", "12.34")
    assert status == 0 and "deposited $12.34" in out and "balance $12.34" in out
    [event] = events(err)
    assert event["event"] == "ops.fund" and event["amount_cents"] == 1234
    assert run("account", "fund", "fam1", "--cents", "250")[0] == 0
    assert run("account", "fund", "fam1", "--amount", "0.1")[0] == 0
    assert world.account("fam1").balance_cents == 1234 + 250 + 10

    doc = json.loads(run("account", "show", "fam1", "--json")[1])
    assert doc["balance_cents"] == 1494 and doc["held_cents"] == 0 and doc["available_cents"] == 1494
    assert all(isinstance(doc[k], int) for k in doc if k.endswith("_cents"))
    assert doc["owner"] == "Sam Doe" and doc["numbers"] == [e164(NUMBER)]
    assert "balance    $14.94" in run("account", "show", "fam1")[1]

    ledger = json.loads(run("account", "ledger", "fam1", "--json")[1])["entries"]
    assert [(e["kind"], e["amount_cents"], e["balance_cents"]) for e in ledger] == [
        ("deposit", 1234, 1234), ("deposit", 250, 1484), ("deposit", 10, 1494)]
    assert all(e["time"].endswith("Z") for e in ledger)
    text = run("account", "ledger", "fam1")[1]
    assert "+$12.34" in text and "$14.94" in text


def test_account_create_rejects_a_number_another_account_pays_for(run, world):
    status, _, err = run("account", "create", "fam2", "--owner", "Kim", "--number", NUMBER)
    assert status == 1
    one_line_error(err, f"number {e164(NUMBER)} already belongs to account fam1")
    assert world.account("fam2") is None
    status, _, err = run("account", "show", "fam2")
    assert status == 1
    one_line_error(err, "no such account fam2")


# --- calls ---------------------------------------------------------------------------

def test_calls_list_and_show_render_a_record(run, world):
    cid = "20240501120000-0badcafe"
    records.create(world.r, cid, facility="main", inmate=INMATE, number=NUMBER, account="fam1",
                   started_ms=1714564800000, rate_cents=11, limit_s=900, outcome="accepted")
    records.update(world.r, cid, bridged_ms=1714564810000, ended_ms=1714564935000,
                   billed_minutes=3, billed_cents=33, settled="1")
    records.set_reason(world.r, cid, "called_hangup")

    status, out, _ = run("calls", "list")
    assert status == 0
    row = out.splitlines()[1].split()
    assert row[:2] == [cid, "2024-05-01"] and row[2] == "12:00:00"
    assert row[3:] == [INMATE, NUMBER, "called_hangup", "3", "$0.33"]
    assert json.loads(run("calls", "list", "--limit", "1", "--json")[1])["calls"][0]["call_id"] == cid

    doc = json.loads(run("calls", "show", cid, "--json")[1])
    assert doc["started_at"] == "2024-05-01T12:00:00.000Z" and doc["ended_at"] == "2024-05-01T12:02:15.000Z"
    assert doc["billed_cents"] == 33 and doc["rate_cents"] == 11 and doc["settled"] is True
    assert doc["reason_description"] == "The called party hung up"
    text = run("calls", "show", cid)[1]
    assert "2024-05-01T12:00:10.000Z" in text and "called_hangup: The called party hung up" in text
    assert "$0.33" in text and "$0.11/min" in text

    status, _, err = run("calls", "show", "nope")
    assert status == 1
    one_line_error(err, "no such call nope")


# --- failures of the command line and the environment ----------------------------------

@pytest.mark.parametrize("argv", [
    [], ["facility"], ["facility", "create", "main"], ["block", "add", NUMBER],
    ["account", "fund", "fam1", "--cents", "5", "--amount", "1"], ["calls", "list", "--limit", "0"],
    ["facility", "create", "main", "--name", "X", "--menu-timeout-s", "soon"],
])
def test_usage_errors_are_one_line_and_status_2(run, argv):
    status, out, err = run(*argv)
    assert status == 2 and out == ""
    one_line_error(err, "--help")


def test_unreachable_redis_is_one_line_without_the_password(run, monkeypatch):
    monkeypatch.setenv("ICS_REDIS_URL", "redis://:sekret@127.0.0.1:1/0")
    status, _, err = run("calls", "list")
    assert status == 1
    one_line_error(err, "cannot reach Redis at redis://***@127.0.0.1:1/0")
    assert "sekret" not in err


def test_bad_configuration_is_one_line(run, monkeypatch):
    monkeypatch.setenv("ICS_REDIS_TIMEOUT_MS", "soon")
    status, _, err = run("facility", "list")
    assert status == 1
    one_line_error(err, "redis.timeout_ms must be int")


@pytest.mark.skipif(not ICSCTL.exists(), reason="console script not installed (pip install -e .)")
def test_the_console_script_runs(redis_url, tmp_path, store):
    env = dict(os.environ, ICS_REDIS_URL=redis_url, ICS_SOUNDS_DIR=str(tmp_path), ICS_LOG_FORMAT="json")
    env.pop("ICS_CONFIG", None)
    made = subprocess.run([str(ICSCTL), "facility", "create", "main", "--name", "Main", "--no-audio"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stderr)["event"] == "ops.facility_create"
    shown = subprocess.run([str(ICSCTL), "facility", "show", "main", "--json"],
                           env=env, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "Main"
    missing = subprocess.run([str(ICSCTL), "inmate", "show", "1234"], env=env, capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 1 and missing.stderr == "icsctl: no such inmate 1234\n"


def test_facility_rules_are_switched_on_and_off_and_shown(run, store):
    status, _, _ = run("facility", "create", "main", "--name", "Main", "--no-audio", "--rule-silence", "off",
                       "--hold-grace-s", "0", "--digits-max", "5", "--warn-before-s", "120,60")
    assert status == 0
    fac = store.facility("main")
    assert (fac["rule_silence"], fac["rule_hold"], fac["hold_grace_s"], fac["digits_max"], fac["warn_before_s"]) \
        == (False, True, 0, 5, "120,60")
    status, out, _ = run("facility", "show", "main")
    assert "rule silence         off  (facility)" in out and "more than 5 in 10 s" in out
    status, _, err = run("facility", "create", "x", "--name", "X", "--no-audio", "--rule-hold", "maybe")
    assert status == 2 and "must be on or off" in err and "x" not in store.facilities()
    status, _, err = run("facility", "create", "y", "--name", "Y", "--no-audio", "--warn-before-s", "60,soon")
    assert status == 1 and "warn_before_s" in err and "y" not in store.facilities()


def test_calls_show_prints_the_rule_and_its_evidence(run, store):
    records.create(store.r, "20261122000000-0000abcd", facility="main", number="3125550100", reason="hold",
                   rule="hold", rule_threshold="hold_grace_s=3", cut_ms=1795378276000,
                   evidence=json.dumps([{"event": "Hold", "time": "1795378273.310983",
                                         "channel": "PJSIP/3125550100-00000001", "MusicClass": "default"}]))
    status, out, _ = run("calls", "show", "20261122000000-0000abcd")
    assert status == 0 and "hold_grace_s=3" in out
    assert "2026-11-22T20:11:13.310+00:00  Hold" in out
    assert "Hold  PJSIP/3125550100-00000001  (MusicClass=default)" in out
    status, out, _ = run("calls", "show", "20261122000000-0000abcd", "--json")
    assert json.loads(out)["evidence"][0]["event"] == "Hold"
