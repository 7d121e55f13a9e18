"""Rebuild `medkor/assets/demo/tokenizer-extended/` with `medkor extend-vocab`.

The base is the demo's tiny Gemma 3 tokenizer, the corpus the demo's training text
(validation text held out for the before/after figures). Deterministic, no network:

    PYTHONPATH=. python scripts/make_demo_tokenizer.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medkor.commands.extend_vocab import main  # noqa: E402

DEMO = Path("medkor") / "assets" / "demo"  # relative: the stats file records these paths

if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main([
        "--base", str(DEMO / "tiny-gemma3"),
        "--corpus", str(DEMO / "data" / "train.jsonl"),
        "--heldout", str(DEMO / "data" / "validation.jsonl"),
        "--num_new_tokens", "400",
        "--min_frequency", "3",
        "--out", str(DEMO / "tokenizer-extended"),
        "--overwrite",
        *sys.argv[1:],
    ]))
