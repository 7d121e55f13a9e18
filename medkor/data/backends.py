"""The Rust tokenizer a text build tokenizes with, remembered by the tokenizer's content.

Loading a Hugging Face tokenizer imports transformers (about 2 s, torch included),
which a build that tokenizes one changed piece of plain text would otherwise pay every
time. The first build with a tokenizer stores what plain text needs of it: the backend
exactly as `build.whole_documents` makes it (no truncation, no padding) and the
BOS/EOS/pad ids, under the tokenizer's content fingerprint (`key_inputs`: its whole
state, special tokens included), in `<cache_dir>/.pieces/tokenizers/<fingerprint>.json`.
Later builds load that with `tokenizers` alone. Formats that render with the chat
template (`chat`, `mcq`) still need the Hugging Face tokenizer itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from medkor.run.atomic import atomic_write_text

FOLDER = "tokenizers"


def _path(cache_dir: Path, fingerprint: str) -> Path:
    from medkor.data.pieces import PIECES_DIR

    return Path(cache_dir) / PIECES_DIR / FOLDER / f"{fingerprint[:32]}.json"


def text_backend(cache_dir: Path, fingerprint: str,
                 load_tokenizer: Callable[[], Any]) -> tuple[Any, tuple[int, int, int]]:
    """(the backend for plain text, (bos, eos, pad)): stored ones, else from the tokenizer (then stored)."""
    from tokenizers import Tokenizer

    path = _path(cache_dir, fingerprint)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return Tokenizer.from_str(stored["backend"]), tuple(stored["special_ids"])  # type: ignore[return-value]
    except Exception:  # absent, or damaged (`tokenizers` raises its own exception type): made again below
        pass
    from medkor.data.build import special_ids, whole_documents

    tokenizer = load_tokenizer()
    backend, ids = whole_documents(tokenizer), special_ids(tokenizer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"backend": backend.to_str(), "special_ids": list(ids)}),
                          what="tokenizer backend")
    except OSError:
        pass  # only not remembered
    return backend, ids


def stored_special_ids(cache_dir: Path, fingerprint: str) -> Optional[tuple[int, int, int]]:
    """(bos, eos, pad) of a stored backend, None when there is none."""
    try:
        ids = json.loads(_path(cache_dir, fingerprint).read_text(encoding="utf-8"))["special_ids"]
        return int(ids[0]), int(ids[1]), int(ids[2])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
