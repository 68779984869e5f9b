"""Prompt manifest: which sounds exist in which language, and the start-up checks.

prompts/manifest.toml holds every prompt's text per language: the top-level keys are
English (the default language); each other language is a table of the same keys
(`[es]`), and `[voices]` names the offline voice each language is rendered with. A
language is added by adding its table and its voice, no code: a language missing a
prompt (or a voice, or with a key English does not have) stops every service at
start-up (ics.config.load calls check()).

Where Asterisk finds them: English under ics/prompts/<key>, any other language under
ics/prompts/<lang>/<key> (explicit paths, not Asterisk's own language fallback, which would
silently play English for a missing Spanish file).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

# prompts/manifest.toml, the one list; ics/manifest.toml links to it in a checkout and is the
# file itself once installed (package data), so the installed services need no checkout.
# ICS_PROMPTS_MANIFEST points at another (a site's own languages).
SHIPPED_PATH = (Path(__file__).resolve().parent / "manifest.toml").resolve()
MANIFEST_PATH = Path(os.environ.get("ICS_PROMPTS_MANIFEST") or SHIPPED_PATH)
ASTERISK_DIR = "ics"  # the sounds.dir as Asterisk names it, relative to its sounds directory
DEFAULT_LANGUAGE = "en"
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}$")  # ISO 639: also Asterisk's CHANNEL(language) and sounds dir


def load(path: Path = MANIFEST_PATH) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(texts per language, voice per language) as the file has them, unchecked."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    texts: dict[str, dict[str, str]] = {DEFAULT_LANGUAGE: {}}
    voices: dict[str, str] = {}
    for key, value in data.items():
        if key == "voices" and isinstance(value, dict):
            voices = {str(k): str(v) for k, v in value.items()}
        elif isinstance(value, dict):
            texts[key] = {str(k): v for k, v in value.items()}
        else:
            texts[DEFAULT_LANGUAGE][key] = value
    return texts, voices


def problems(texts: dict[str, dict[str, str]], voices: dict[str, str]) -> list[str]:
    """What makes a manifest unusable: each language must have exactly English's prompts, as
    one line of text each, and a voice."""
    out = []
    english = texts.get(DEFAULT_LANGUAGE, {})
    for lang, table in texts.items():
        if not LANGUAGE_RE.match(lang):
            out.append(f"language {lang!r} is not an ISO 639 code (two or three lower-case letters)")
        if lang not in voices:
            out.append(f"language {lang!r} has no voice in [voices]")
        missing = [k for k in english if k not in table]
        if missing:
            out.append(f"language {lang!r} is missing {len(missing)} prompt(s): {', '.join(missing[:10])}")
        extra = [k for k in table if k not in english]
        if extra:
            out.append(f"language {lang!r} has prompt(s) English does not: {', '.join(extra[:10])}")
        bad = [k for k, v in table.items() if not isinstance(v, str) or not v.strip() or any(c in v for c in "\r\n\0")]
        if bad:
            out.append(f"language {lang!r}: prompt(s) {', '.join(bad[:10])} must be one non-empty line of text")
    for lang in voices:
        if lang not in texts:
            out.append(f"[voices] names {lang!r}, which has no prompts")
    return out


TEXTS, VOICES = load()
MANIFEST = TEXTS[DEFAULT_LANGUAGE]           # the keys (and the English texts)
LANGUAGES = tuple(sorted(TEXTS, key=lambda lang: (lang != DEFAULT_LANGUAGE, lang)))


def check() -> None:
    """Raise ValueError naming every problem of the manifest the services load."""
    found = problems(TEXTS, VOICES)
    if found:
        raise ValueError(f"prompt manifest {MANIFEST_PATH}: " + "; ".join(found))


def language(lang: str | None) -> str:
    """A known language, or the default for an unset one; an unknown one is a bug or bad data."""
    if not lang:
        return DEFAULT_LANGUAGE
    if lang not in TEXTS:
        raise KeyError(f"language {lang!r} is not in {MANIFEST_PATH} (known: {', '.join(LANGUAGES)})")
    return lang


def prompts_dir(lang: str = DEFAULT_LANGUAGE) -> str:
    """Asterisk's directory of one language's prompts (also the ICS_PROMPTS channel variable)."""
    lang = language(lang)
    return f"{ASTERISK_DIR}/prompts" if lang == DEFAULT_LANGUAGE else f"{ASTERISK_DIR}/prompts/{lang}"


def sound(key: str, lang: str = DEFAULT_LANGUAGE) -> str:
    """Asterisk's name for a prompt; an unknown key is a bug, caught at import by the tests."""
    if key not in MANIFEST:
        raise KeyError(f"prompt {key!r} is not in {MANIFEST_PATH}")
    return f"{prompts_dir(lang)}/{key}"


def digit_sound(d: str, lang: str) -> str:
    """A keypad key spoken in lang from Asterisk's core sounds (<lang>/digits/, whatever the
    channel's own language is: used to offer another language in that language)."""
    names = {"*": "star", "#": "pound"}
    return f"{language(lang)}/digits/{names.get(d, d)}"


def name_sound(inmate_id: str) -> str:
    return f"{ASTERISK_DIR}/names/{inmate_id}"


def facility_sound(facility_id: str) -> str:
    return f"{ASTERISK_DIR}/facilities/{facility_id}"


def rel_path(key: str, lang: str) -> str:
    """A prompt's file under the sounds dir: prompts/<key>.wav or prompts/<lang>/<key>.wav."""
    return sound(key, lang).removeprefix(ASTERISK_DIR + "/") + ".wav"


def missing(sounds_dir: Path) -> list[str]:
    """Prompts (lang/key) with no rendered file under sounds_dir/prompts, every language."""
    return [f"{lang}/{k}" for lang in LANGUAGES for k in MANIFEST
            if not (sounds_dir / rel_path(k, lang)).is_file()]


def exists(sounds_dir: Path, asterisk_name: str) -> bool:
    """Whether an ics/... sound name has its WAV under sounds_dir (the host's view)."""
    rel = asterisk_name.removeprefix(ASTERISK_DIR + "/")
    return (sounds_dir / f"{rel}.wav").is_file()
