"""Sound files in the one format the stack plays: WAV, 8 kHz, mono, 16-bit.

Speech comes from espeak-ng (Debian package); pydub converts. Used by the
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
ESPEAK_WPM = "185"


class AudioError(RuntimeError):
    pass


def to_asterisk(segment: AudioSegment, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.wav")
    segment.set_frame_rate(RATE_HZ).set_channels(1).set_sample_width(2).export(tmp, format="wav")
    os.replace(tmp, out)  # Asterisk never sees a half-written file
    return out


def speak(text: str, out: Path) -> Path:
    """Render text with espeak-ng into out (.wav)."""
    exe = shutil.which("espeak-ng")
    if not exe:
        raise AudioError("espeak-ng is not installed (apt-get install espeak-ng)")
    if any(c in text for c in "\r\n\0"):
        raise AudioError("prompt text must be one line")
    with tempfile.NamedTemporaryFile(suffix=".wav") as raw:
        proc = subprocess.run([exe, "-v", "en-us", "-s", ESPEAK_WPM, "-w", raw.name, "--", text],
                              capture_output=True, timeout=30)
        if proc.returncode != 0:
            raise AudioError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
        return to_asterisk(AudioSegment.from_wav(raw.name), out)


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
