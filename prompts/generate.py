"""Render every prompt in prompts/manifest.toml, every language, to 8 kHz mono WAV.

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
    prompts.check()  # a language missing a prompt or a voice renders nothing
    made = 0
    for lang in prompts.LANGUAGES:
        for key, text in prompts.TEXTS[lang].items():
            out = args.out.parent / prompts.rel_path(key, lang)
            if out.exists() and not args.force:
                continue
            audio.speak(text, out, prompts.VOICES[lang])
            made += 1
    print(f"{made} prompts rendered, {len(prompts.MANIFEST)} in the manifest in "
          f"{len(prompts.LANGUAGES)} languages ({', '.join(prompts.LANGUAGES)}), in {args.out}")
    missing = prompts.missing(args.out.parent) if args.out.name == "prompts" else []
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
