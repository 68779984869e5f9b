"""Sound files in the one format the stack plays: WAV, 8 kHz, mono, 16-bit.

Speech comes from an offline voice a Debian package ships, named per language in the
prompt manifest's [voices]: espeak-ng (any of its languages) or SVOX Pico
(pico2wave, libttspico-utils: en-US, en-GB, es-ES, de-DE, fr-FR, it-IT); pydub converts. Used by the
prompt generator, by icsctl when a facility is created (its spoken name) and
when ops import an inmate's recorded name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

# pydub warns on import when ffmpeg is absent; WAV needs no ffmpeg, and the
# warning would land in icsctl's JSON log stream on stderr.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
    from pydub import AudioSegment

RATE_HZ = 8000
DEFAULT_VOICE = "espeak-ng en-us 185"
ENGINES = ("espeak-ng", "pico2wave")


class AudioError(RuntimeError):
    pass


def to_asterisk(segment: AudioSegment, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.wav")
    segment.set_frame_rate(RATE_HZ).set_channels(1).set_sample_width(2).export(tmp, format="wav")
    os.replace(tmp, out)  # Asterisk never sees a half-written file
    return out


def parse_voice(voice: str) -> list[str]:
    """The command that renders text with voice ("espeak-ng <voice> <wpm>" or "pico2wave <locale>"),
    up to the output file and the text."""
    parts = voice.split()
    if parts[:1] == ["espeak-ng"] and len(parts) == 3 and parts[2].isdigit():
        return ["espeak-ng", "-v", parts[1], "-s", parts[2], "-w"]
    if parts[:1] == ["pico2wave"] and len(parts) == 2:
        return ["pico2wave", "-l", parts[1], "-w"]
    raise AudioError(f"voice {voice!r}: expected 'espeak-ng <voice> <words per minute>' or 'pico2wave <locale>'")


def speak(text: str, out: Path, voice: str = DEFAULT_VOICE) -> Path:
    """Render text with voice into out (.wav)."""
    cmd = parse_voice(voice)
    exe = shutil.which(cmd[0])
    if not exe:
        package = {"espeak-ng": "espeak-ng", "pico2wave": "libttspico-utils"}[cmd[0]]
        raise AudioError(f"{cmd[0]} is not installed (apt-get install {package})")
    if any(c in text for c in "\r\n\0"):
        raise AudioError("prompt text must be one line")
    # pico2wave wants a file name ending in .wav that does not exist yet
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        proc = subprocess.run([exe, *cmd[1:], str(raw), "--", text] if cmd[0] == "espeak-ng"
                              else [exe, *cmd[1:], str(raw), text], capture_output=True, timeout=30)
        if proc.returncode != 0 or not raw.is_file():
            raise AudioError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
        return to_asterisk(level(AudioSegment.from_wav(raw)), out)


SPEECH_DBFS = -21.0   # every voice's speech brought to one loudness (espeak-ng's English is about
PEAK_MAX_DBFS = -1.0  # this; Pico's Spanish came out 5 dB louder), never clipping


def level(segment: AudioSegment) -> AudioSegment:
    """One loudness for every voice and language, so a switch of language is not a jump in volume."""
    if segment.dBFS == float("-inf"):
        return segment
    gain = min(SPEECH_DBFS - segment.dBFS, PEAK_MAX_DBFS - segment.max_dBFS)
    return segment.apply_gain(gain)


def import_file(src: Path, out: Path, max_seconds: int = 10) -> Path:
    """Convert an ops-supplied recording (WAV; other formats need ffmpeg) into out."""
    try:
        seg = AudioSegment.from_wav(src) if src.suffix.lower() == ".wav" else AudioSegment.from_file(src)
    except Exception as exc:  # pydub raises several unrelated types for bad input
        raise AudioError(f"cannot read {src}: {exc}") from None
    if len(seg) == 0:
        raise AudioError(f"{src} is empty")
    return to_asterisk(seg[: max_seconds * 1000], out)


def duration_ms(path: Path) -> int:
    return len(AudioSegment.from_wav(path))
