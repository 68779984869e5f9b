"""Prompt manifest: which sounds exist, and the start-up check that they are all there."""

from __future__ import annotations

import tomllib
from pathlib import Path

# prompts/manifest.toml, the one list; ics/manifest.toml links to it in a checkout and is the
# file itself once installed (package data), so the installed services need no checkout
MANIFEST_PATH = (Path(__file__).resolve().parent / "manifest.toml").resolve()
ASTERISK_DIR = "ics"  # the sounds.dir as Asterisk names it, relative to its sounds directory


def manifest(path: Path = MANIFEST_PATH) -> dict[str, str]:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


MANIFEST = manifest()


def sound(key: str) -> str:
    """Asterisk's name for a prompt; an unknown key is a bug, caught at import by the tests."""
    if key not in MANIFEST:
        raise KeyError(f"prompt {key!r} is not in {MANIFEST_PATH}")
    return f"{ASTERISK_DIR}/prompts/{key}"


def name_sound(inmate_id: str) -> str:
    return f"{ASTERISK_DIR}/names/{inmate_id}"


def facility_sound(facility_id: str) -> str:
    return f"{ASTERISK_DIR}/facilities/{facility_id}"


def missing(sounds_dir: Path) -> list[str]:
    """Prompt keys with no rendered file under sounds_dir/prompts."""
    return [k for k in MANIFEST if not (sounds_dir / "prompts" / f"{k}.wav").is_file()]


def exists(sounds_dir: Path, asterisk_name: str) -> bool:
    """Whether an ics/... sound name has its WAV under sounds_dir (the host's view)."""
    rel = asterisk_name.removeprefix(ASTERISK_DIR + "/")
    return (sounds_dir / f"{rel}.wav").is_file()
