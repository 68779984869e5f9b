"""Languages end to end: real Asterisk 22, Redis and pjsua2 phones.

Which file Asterisk played is read from AMI (AGIExecStart / AGIExecEnd of each STREAM FILE:
the flow's prompts are streamed over AGI, which raises no PLAYBACK test event), and how long
it played from Asterisk's own event times and from the audio the called phone recorded.
"""

from __future__ import annotations

import time

import pytest

from ics import audio, prompts

from tests.support.callflow import INMATE, NUMBER, agi_command, login, make_world, press_when, wait_settled
from tests.e2e.test_policy import lines, loud_spans  # noqa: F401  (lines: the inmate's and family's phones)

pytestmark = pytest.mark.e2e

FAMILY = f"PJSIP/{NUMBER}"
ANNOUNCEMENT = ("announce-from", "announce-at", "announce-recorded")


def streamed(ami, mark, prefix: str) -> list[dict]:
    """Each STREAM FILE on the channels starting with prefix: file, and how long it ran (s, from
    Asterisk's timestamps of its AGIExecStart and AGIExecEnd)."""
    evs = ami.events(lambda e: e.get("Event") in ("AGIExecStart", "AGIExecEnd")
                     and e.get("Channel", "").startswith(prefix), since=mark)
    starts, out = {}, []
    for e in evs:
        key = (e.get("Channel"), e.get("CommandId"))
        if e["Event"] == "AGIExecStart" and e.get("Command", "").startswith("STREAM FILE"):
            starts[key] = e
        elif e["Event"] == "AGIExecEnd" and key in starts:
            s = starts.pop(key)
            out.append({"file": s["Command"].split('"')[1], "s": float(e["Timestamp"]) - float(s["Timestamp"]),
                        "start": float(s["Timestamp"]), "t": float(s["_t"]), "result": e.get("Result", "")})
    return out


def answered(ami, lines):
    """The inmate calls the family, who answer: (inmate's call, called call, AMI mark)."""
    inmate, family = lines
    mark = ami.mark()
    call = inmate.call(NUMBER)
    login(ami, call, mark)
    callee = family.wait_incoming(15)
    callee.answer()
    return call, callee, mark


def file_s(world, key: str, lang: str) -> float:
    return audio.duration_ms(world.cfg.sounds_dir / prompts.rel_path(key, lang)) / 1000


def test_spanish_family_hears_the_announcement_and_quote_in_spanish(ami, lines, tmp_path):
    world = make_world(balance_cents=500, rate_cents_per_min=11)
    world.store.set_number_info(NUMBER, language="es")  # the family's number is set to Spanish
    call, callee, mark = answered(ami, lines)
    callee.wait_media()
    callee.record_audio(tmp_path / "called.wav")
    rec_t0 = time.time()
    # the whole announcement heard, then the quote key
    ami.wait_for(agi_command("prompts/es/menu-accept", FAMILY), 30, since=mark)
    callee.stop_recording()
    time.sleep(0.4)
    callee.dtmf("3")
    ami.wait_for(agi_command("prompts/es/rate-whole-minutes", FAMILY), 20, since=mark)
    m2 = ami.mark()
    press_when(ami, callee, "prompts/es/menu-accept", "1", m2, channel_prefix=FAMILY)
    ami.wait_for(lambda e: e.get("Event") == "BridgeEnter" and e.get("Channel", "").startswith(FAMILY), 10, since=m2)
    time.sleep(1)
    callee.hangup()
    rec = wait_settled(world)
    assert rec["reason"] == "called_hangup" and rec["billed_cents"] == 11

    played = streamed(ami, mark, FAMILY)
    files = [p["file"] for p in played]
    # Spanish throughout; the only English is the offer of English itself, in English
    ours = [f for f in files if f.startswith("ics/prompts/")]
    assert {f for f in ours if not f.startswith("ics/prompts/es/")} == {"ics/prompts/lang-offer"}, files
    for key in (*ANNOUNCEMENT, "menu-accept", "rate-is", "rate-per-minute", "rate-whole-minutes", "connecting"):
        assert f"ics/prompts/es/{key}" in files, (key, files)
    said = ami.events(agi_command("SAY NUMBER", FAMILY), since=mark)
    assert said and said[0]["Command"].startswith('SAY NUMBER "11"')
    assert ami.events(agi_command('SET VARIABLE "CHANNEL(language)" "es"', FAMILY), since=mark)
    # each announcement file ran for the Spanish file's length (Asterisk's own clock), not English's
    for key in ANNOUNCEMENT:
        ran = next(p["s"] for p in played if p["file"] == f"ics/prompts/es/{key}")
        assert abs(ran - file_s(world, key, "es")) < 0.35, (key, ran, file_s(world, key, "es"))
        assert abs(ran - file_s(world, key, "en")) > 0.4, (key, ran, file_s(world, key, "en"))
    # ... and the called phone heard that much: from the Spanish announcement's first file to the
    # menu (placed in its recording by this machine's clock), sound nearly all the way, for the
    # Spanish files' length, not the English ones'
    first = next(p for p in played if p["file"] == "ics/prompts/es/announce-from")
    menu = next(p for p in played if p["file"] == "ics/prompts/es/menu-accept")
    a, b = (first["t"] - rec_t0) * 1000, (menu["t"] - rec_t0) * 1000
    window_s = (b - a) / 1000
    spoken = sum(p["s"] for p in played if first["start"] <= p["start"] < menu["start"])
    english_s = spoken - sum(file_s(world, k, "es") - file_s(world, k, "en") for k in ANNOUNCEMENT)
    assert abs(window_s - spoken) < 0.6 and abs(window_s - english_s) > 1.5, (window_s, spoken, english_s)
    heard = loud_spans(tmp_path / "called.wav")
    loud_ms = sum(max(0, min(e, b) - max(st, a)) for st, e in heard)
    assert loud_ms >= 0.6 * (b - a), (loud_ms, a, b, heard)
    assert any(b - 1200 <= e <= b + 600 for _, e in heard), ("sound up to the menu", b, heard)
    # the record keeps both parties' languages
    assert (rec["inmate_language"], rec["called_language"]) == ("en", "es")
    assert "language_switched" not in rec
    call.wait_disconnected(10)


def test_switch_to_spanish_mid_announcement(ami, lines):
    world = make_world(balance_cents=500)  # the facility speaks English; nothing set for the number
    world.store.set_inmate_language(INMATE, "es")  # the inmate's profile: Spanish
    call, callee, mark = answered(ami, lines)
    # mid-announcement: while "This is a prepaid call from" plays in English
    press_when(ami, callee, "ics/prompts/announce-from", "8", mark, channel_prefix=FAMILY)
    ami.wait_for(agi_command("prompts/es/announce-from", FAMILY), 10, since=mark)
    m2 = ami.mark()
    press_when(ami, callee, "prompts/es/menu-accept", "2", m2, channel_prefix=FAMILY)  # refuse
    ami.wait_for(agi_command("prompts/es/refused", FAMILY), 10, since=m2)
    rec = wait_settled(world)
    assert rec["reason"] == "refused" and rec["billed_cents"] == 0
    files = [p["file"] for p in streamed(ami, mark, FAMILY)]
    switched_at = files.index("ics/prompts/announce-from")
    # the English announcement was cut by the key, and everything after it is Spanish, but the
    # offer to go back ("For English, press 8", in English)
    after = [f for f in files[switched_at + 1:] if f.startswith("ics/prompts/")]
    assert after and all(f.startswith("ics/prompts/es/") or f == "ics/prompts/lang-offer" for f in after), files
    assert "ics/prompts/announce-at" not in files
    assert (rec["called_language"], rec["language_switched"]) == ("es", "en>es")
    # the inmate heard their own profile's language once known (before the PIN: the facility's)
    inmate_files = [p["file"] for p in streamed(ami, mark, "PJSIP/inmate1")]
    assert "ics/prompts/es/please-hold" in inmate_files and "ics/prompts/please-hold" not in inmate_files
    assert rec["inmate_language"] == "es"
    call.wait_disconnected(20)


def test_warnings_and_the_cut_follow_the_called_partys_language(ami, lines):
    # a one-minute call with one warning 30 s before; nobody talks here (silence rule off)
    world = make_world(balance_cents=500, time_limit_s=60, warn_before_s="30", rule_silence=False)
    world.store.set_number_info(NUMBER, language="es")
    call, callee, mark = answered(ami, lines)
    press_when(ami, callee, "prompts/es/menu-accept", "1", mark, channel_prefix=FAMILY)
    callee.wait_disconnected(90)
    rec = wait_settled(world)
    assert rec["reason"] == "time_limit"

    def played(prefix):
        return [e.get("Message", "") for e in ami.events(
            lambda e: e.get("Event") == "TestEvent" and e.get("State") == "PLAYBACK"
            and e.get("Channel", "").startswith(prefix), since=mark)]
    # the warning, barged into both legs, in the called party's language
    notice = played("Local/30@ics-notice")
    assert notice[0] == "ics/prompts/es/warn-ends-in" and notice[-1] == "ics/prompts/es/warn-seconds", notice
    # why it ended: each party in their own language
    assert "ics/prompts/es/cut-time_limit" in played(FAMILY)
    assert "ics/prompts/cut-time_limit" in played("PJSIP/inmate1")
    call.wait_disconnected(20)
