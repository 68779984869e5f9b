"""Render every prompt in prompts/manifest.toml to 8 kHz mono WAV.

    python prompts/generate.py --out <sounds.dir>/prompts [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ics import audio, prompts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--force", action="store_true", help="re-render files that exist")
    args = ap.parse_args(argv)
    made = 0
    for key, text in prompts.MANIFEST.items():
        out = args.out / f"{key}.wav"
        if out.exists() and not args.force:
            continue
        audio.speak(text, out)
        made += 1
    print(f"{made} prompts rendered, {len(prompts.MANIFEST)} in the manifest, in {args.out}")
    missing = prompts.missing(args.out.parent) if args.out.name == "prompts" else []
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
