"""Languages: the manifest's check, the settings that name languages, and the start-up refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ami.rules import AUDIO_RULES, Policy, for_call
from ics import audio, config, prompts

VENV_BIN = Path(sys.executable).parent


def test_every_language_has_every_prompt_and_a_voice():
    assert prompts.LANGUAGES[0] == "en" and "es" in prompts.LANGUAGES
    assert prompts.problems(prompts.TEXTS, prompts.VOICES) == []
    for lang in prompts.LANGUAGES:
        audio.parse_voice(prompts.VOICES[lang])  # a voice the generator can run


def test_a_missing_prompt_or_voice_is_named():
    texts = {"en": {"a": "A", "b": "B"}, "fr": {"a": "Un"}, "de": {"a": "A", "b": "B", "c": "C"}}
    found = prompts.problems(texts, {"en": "espeak-ng en-us 185", "fr": "espeak-ng fr 175"})
    assert "language 'fr' is missing 1 prompt(s): b" in found
    assert "language 'de' has no voice in [voices]" in found
    assert "language 'de' has prompt(s) English does not: c" in found


def test_sound_paths_per_language():
    assert prompts.sound("goodbye") == "ics/prompts/goodbye"
    assert prompts.sound("goodbye", "es") == "ics/prompts/es/goodbye"
    assert prompts.digit_sound("8", "es") == "es/digits/8"
    with pytest.raises(KeyError):
        prompts.sound("goodbye", "xx")


def test_facility_language_and_switch_key_are_checked():
    base = dict(config.DEFAULTS["facility_defaults"])
    with pytest.raises(config.ConfigError, match="lang_switch_digit '3' is already the menu's quote_digit"):
        config.facility_settings(base, {"lang_switch_digit": "3"}, "facility f")
    with pytest.raises(config.ConfigError, match="language 'fr' has no prompts"):
        config.facility_settings(base, {"language": "fr"}, "facility f")
    with pytest.raises(config.ConfigError, match="relay_numbers"):
        config.facility_settings(base, {"relay_numbers": "711, not-a-number"}, "facility f")
    assert config.relay_numbers("711, (312) 555-0108") == {"711", "+13125550108"}


def test_audio_rules_off_for_a_call_that_says_so():
    p = Policy()
    off = for_call(p, {"rules_off": "extra_digits,silence"})
    assert (off.silence, off.extra_digits) == (False, False)
    assert (off.hold, off.hook_flash, off.transfer) == (True, True, True)  # the others stay on
    assert for_call(p, {"rules_off": "hold"}) == p  # only audio rules can be turned off per call
    assert for_call(p, {}) == p
    assert AUDIO_RULES >= {"silence", "extra_digits"}


def test_a_language_missing_a_prompt_stops_the_services_at_start_up(tmp_path):
    shipped = prompts.SHIPPED_PATH.read_text()
    # a French table with every prompt but one, and its voice
    french = "\n[fr]\n" + "\n".join(f'{k} = "x"' for k in prompts.MANIFEST if k != "goodbye") + "\n"
    broken = tmp_path / "manifest.toml"
    broken.write_text(shipped.replace("[voices]\n", '[voices]\nfr = "espeak-ng fr 175"\n') + french)
    env = {**os.environ, "ICS_PROMPTS_MANIFEST": str(broken), "ICS_REDIS_URL": "redis://127.0.0.1:1/0"}
    for exe in ("ics-fastagi", "ics-ami"):
        proc = subprocess.run([str(VENV_BIN / exe)], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (exe, proc.returncode, proc.stdout, proc.stderr)
        assert "language 'fr' is missing 1 prompt(s): goodbye" in proc.stdout + proc.stderr, exe
    # complete, the same manifest loads (and French is a language, no code changed)
    broken.write_text(shipped.replace("[voices]\n", '[voices]\nfr = "espeak-ng fr 175"\n')
                      + "\n[fr]\n" + "\n".join(f'{k} = "x"' for k in prompts.MANIFEST) + "\n")
    out = subprocess.run([sys.executable, "-c", "from ics import config, prompts; config.load(environ={}); "
                          "print(prompts.LANGUAGES)"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "'fr'" in out.stdout, out.stderr
