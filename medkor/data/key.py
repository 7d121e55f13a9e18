"""What a split's cache is keyed by: the request, its key inputs, its key and folder name.

The first of three steps every cache request takes, in this order: key (this module),
then store (`pieces` + `build`: tokenized pieces, assembled into rows), then open
(`cache`: publish, check, memory-map). Nothing here tokenizes or writes rows.

A split's key is content, not names: the tokenizer's content hash, each data file's
name, size and content hash (remembered by stat, see `fingerprint`), every parameter
that changes the rows, and the cache format version. A piece's key (`piece_context`
+ the bytes of its lines) leaves out everything that only decides which documents a
split takes or how they are packed, so one piece serves every split and row layout
that reads the same lines the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from medkor.data.fingerprint import FingerprintMemo, file_fingerprints, hash_text, tokenizer_fingerprint
from medkor.data.sources import Selection, check_file

CACHE_VERSION = 5  # 5: rows in row segments, one per piece and a tail, shared by caches
PIECE_VERSION = 1  # bump when a piece's layout or what it holds changes
# average bytes of JSONL lines per piece (content-defined cuts, 1..16 MiB). Each piece is a unit of tokenizing
# and a row segment: 4 MiB keeps an edit's re-tokenizing under a second and a 1.5 GB corpus near 400 segments
PIECE_BYTES = 4 << 20


class CacheError(RuntimeError):
    """A cache that is missing, damaged, or cannot be built (the message says what to do)."""


@dataclass
class CacheRequest:
    """Everything that decides the rows of one split, and where they are cached."""

    split: str
    selection: Selection
    data_dir: Path
    cache_dir: Path
    tokenizer_path: str
    max_length: int = 2048
    packing: bool = True
    num_proc: Optional[int] = None
    overwrite: bool = False
    on_long_example: str = "error"  # formats with examples: one longer than a row is an error or skipped
    piece_bytes: int = PIECE_BYTES  # how finely files are cut into pieces (packed text: where rows break)
    lock_timeout: Optional[float] = None  # seconds to wait for another builder of the key (None: the lock's default)


class Resolved(NamedTuple):
    """A request's key inputs, key and the folder its cache is published at (unpacks as that triple)."""

    inputs: dict[str, Any]
    key: str
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


class TokenizerLoader:
    """Loads the Hugging Face tokenizer once, and only if something needs it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.value: Any = None

    def __call__(self) -> Any:
        if self.value is None:
            from transformers import AutoTokenizer

            self.value = AutoTokenizer.from_pretrained(self.path)
        return self.value


def key_inputs(request: CacheRequest, memo: FingerprintMemo, load_tokenizer: Callable[[], Any]) -> dict[str, Any]:
    """What goes into the key: tokenizer content, data files' content, row parameters, version."""
    sel = request.selection
    for path in sel.files:
        check_file(Path(path))  # a missing or empty file is named before anything is hashed
    return {
        "version": CACHE_VERSION,
        "tokenizer": tokenizer_fingerprint(request.tokenizer_path, memo, load_tokenizer),
        "files": file_fingerprints(sel.files, Path(request.data_dir), memo),
        "params": {
            "split": request.split,
            **sel.spec.key(),
            "max_length": request.max_length,
            "packing": request.packing,
            "max_samples": sel.max_samples,
            "val_fraction": sel.val_fraction,
            "from_train": sel.val_fraction > 0,
            "seed": sel.seed,
            "on_bad_record": sel.on_bad_record,
            # packed text is packed piece by piece: the cuts decide where rows break
            **({"on_long_example": request.on_long_example} if sel.spec.examples else {"piece_bytes": request.piece_bytes}),
        },
    }


def cache_key(inputs: dict[str, Any]) -> str:
    return hash_text(json.dumps(inputs, sort_keys=True, ensure_ascii=False))


def folder_name(split: str, key: str) -> str:
    return f"{split}-{key[:20]}"


def resolve(
    request: CacheRequest, load_tokenizer: Optional[Callable[[], Any]] = None, memo: Optional[FingerprintMemo] = None
) -> Resolved:
    """The request's key inputs, key and folder; loads the tokenizer only if its files changed.

    With a `memo` the caller saves it; without one, remembered hashes are loaded and saved here.
    """
    own = memo is None
    memo = memo if memo is not None else FingerprintMemo(request.cache_dir)
    inputs = key_inputs(request, memo, load_tokenizer or TokenizerLoader(request.tokenizer_path))
    if own:
        save_quietly(memo)
    key = cache_key(inputs)
    return Resolved(inputs, key, Path(request.cache_dir) / folder_name(request.split, key))


def save_quietly(memo: FingerprintMemo) -> None:
    try:
        memo.save()
    except OSError:
        pass  # a read-only cache dir still serves hits


def piece_context(inputs: dict[str, Any], selection: Selection) -> str:
    """The part of every piece key that is not the piece's bytes: how its lines become tokens.

    The tokenizer's content, the format and its options, and the seed of the
    validation draw when the split is carved by `val_fraction` (pieces then carry each
    document's draw). Not in it: max_length, packing, max_samples, val_fraction itself,
    on_bad_record, on_long_example; those act when pieces are assembled into rows.
    """
    context = {
        "piece_version": PIECE_VERSION,
        "tokenizer": inputs["tokenizer"],
        "format": selection.spec.key(),
        "draw_seed": selection.seed if selection.val_fraction > 0 else None,
    }
    return hash_text(json.dumps(context, sort_keys=True, ensure_ascii=False))


def piece_key(context: str, bytes_hash: str) -> str:
    """A piece's key: how its lines are tokenized, and their bytes."""
    return hash_text(context, bytes_hash)[:32]
