"""Every rendered prompt, every language: duration, loudness (RMS dBFS), peak (dBFS), the
longest inner pause and speaking rate (characters of text a second: a file cut short or a
voice reading garbage stands out), with a per-language summary. Exits 1 on a problem.

    .venv/bin/python bench/prompt_levels.py [--sounds .stack/asterisk/var/lib/asterisk/sounds/ics] [--all]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ics import audio, prompts  # noqa: E402,F401  (audio first: it quiets pydub's ffmpeg warning)
from pydub import AudioSegment, silence  # noqa: E402

DEFAULT_SOUNDS = Path(__file__).resolve().parents[1] / ".stack/asterisk/var/lib/asterisk/sounds/ics"
SILENCE_DBFS = -45  # quieter than this, for 300 ms or more, counts as a pause


def measure(path: Path) -> dict:
    seg = AudioSegment.from_wav(path)
    gaps = silence.detect_silence(seg, min_silence_len=300, silence_thresh=SILENCE_DBFS)
    inner = [b - a for a, b in gaps if a > 0 and b < len(seg)]
    return {"ms": len(seg), "rms": seg.dBFS, "peak": seg.max_dBFS, "gap": max(inner, default=0),
            "rate": seg.frame_rate, "ch": seg.channels, "width": seg.sample_width}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sounds", type=Path, default=DEFAULT_SOUNDS)
    ap.add_argument("--all", action="store_true", help="one line per prompt, not only the summary")
    args = ap.parse_args(argv)
    bad = 0
    for lang in prompts.LANGUAGES:
        rows = []
        for key in prompts.MANIFEST:
            m = measure(args.sounds / prompts.rel_path(key, lang))
            if (m["rate"], m["ch"], m["width"]) != (8000, 1, 2) or m["peak"] >= -0.1 or m["rms"] < -35:
                bad += 1
                print(f"  PROBLEM {lang}/{key}: {m}")
            m["cps"] = len(prompts.TEXTS[lang][key]) / (m["ms"] / 1000)  # characters of text a second
            rows.append((key, m))
            if args.all:
                print(f"{lang} {key:34s} {m['ms'] / 1000:6.2f} s  rms {m['rms']:6.1f} dBFS  "
                      f"peak {m['peak']:6.1f} dBFS  longest pause {m['gap']:4d} ms  {m['cps']:5.1f} chars/s")
        cps = sorted(m["cps"] for _, m in rows)
        median_cps = cps[len(cps) // 2]
        for key, m in rows:  # a file much shorter or longer than its text: cut off, or a voice gone wrong
            if len(prompts.TEXTS[lang][key]) >= 12 and not 0.5 <= m["cps"] / median_cps <= 2.0:
                bad += 1
                print(f"  PROBLEM {lang}/{key}: {m['cps']:.1f} chars/s against {median_cps:.1f} for the language")
        total = sum(m["ms"] for _, m in rows)
        rms = sorted(m["rms"] for _, m in rows)
        peak = max(m["peak"] for _, m in rows)
        longest = max(rows, key=lambda r: r[1]["ms"])
        print(f"{lang} ({prompts.VOICES[lang]}): {len(rows)} prompts, {total / 1000:.1f} s in all, "
              f"rms {rms[0]:.1f} to {rms[-1]:.1f} dBFS (median {rms[len(rms) // 2]:.1f}), "
              f"peak max {peak:.1f} dBFS, {median_cps:.1f} chars/s, longest {longest[0]} {longest[1]['ms'] / 1000:.2f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
