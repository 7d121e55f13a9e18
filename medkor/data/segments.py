"""Row segments: one piece's rows in one row layout, stored by content and shared by caches.

A text split's rows are its pieces' rows in file order, each piece packed on its own
(a row never crosses a piece), then one tail segment. A packed piece's tokens after its
last full row are its leftover: the tail packs every piece's leftover into full rows,
each leftover beginning a document there (positions restart, and a document-aware mask
keeps it apart from its neighbour), so every row but the last is full. A segment's key is
its piece's key and what decides its rows (`layout_key`: which documents the split takes,
max_length, packing; and how many it takes under max_samples). A build after any change
therefore writes the segments of changed pieces and the tail, and reuses every other
segment without reading its piece or rewriting its rows.

Layout under `<cache_dir>/.segments/`:
    <key32>.arrow        a rows file (`rows.py`), its facts (`SegmentFacts`) in the schema metadata
    claims/<id>.json     the segment keys a live build uses (`medkor cache gc` keeps them)

Trust: a segment's content hash is remembered with its stat when it is written (and after a
later check found it equal to a manifest's), so reuse and warm starts only stat it; a
changed stat means hashing it again before any row is used.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from medkor.data.fingerprint import FingerprintMemo, hash_mapped, hash_text, stat_tuple
from medkor.data.key import CacheRequest
from medkor.data.packing import Rows
from medkor.data.pieces import ContentStore
from medkor.data.rows import ARROW_READ_ERRORS, RowsFile, RowsFileError, write_rows

SEGMENTS_DIR = ".segments"
SEGMENT_SUFFIX = ".arrow"
SEGMENT_VERSION = 1  # bump when what a segment holds or how a piece is packed changes
FACTS_KEY = b"medkor_segment"


@dataclass
class SegmentFacts:
    """What a split build needs of one segment without reading its rows."""

    rows: int = 0  # rows the cache takes: all but a packed piece's leftover
    leftover: bool = False  # the file's last row is the piece's leftover (for the tail), not a cache row
    documents: int = 0  # documents the split takes from the piece
    tokens: int = 0  # their tokens (rows taken + leftover)
    row_tokens: int = 0  # tokens in the rows taken
    learned: int = 0  # target positions in the rows taken
    records: int = 0  # good records in the piece's lines (any split)
    problems: list = field(default_factory=list)  # [line inside the piece, problem] of its bad lines

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode("utf-8")


def layout_key(request: CacheRequest) -> str:
    """Everything besides the piece that decides a text segment's rows."""
    sel = request.selection
    return hash_text(json.dumps({
        "segment_version": SEGMENT_VERSION,
        "val_fraction": sel.val_fraction,
        "take_validation": sel.take_validation if sel.val_fraction > 0 else None,
        "seed": sel.seed if sel.val_fraction > 0 else None,
        "max_length": request.max_length,
        "packing": request.packing,
    }, sort_keys=True))


def segment_key(layout: str, piece: str, take: Optional[int] = None) -> str:
    """A piece's segment; `take`: only its first `take` documents (where max_samples ends)."""
    return hash_text(layout, piece, str(take))[:32]


def tail_key(layout: str, segments: list[str]) -> str:
    """The tail of a build whose segments are `segments`, in order."""
    return hash_text(layout, "tail", *segments)[:32]


class SegmentStore(ContentStore):
    """The row segments of one cache directory, with their remembered content hashes."""

    folder = SEGMENTS_DIR
    suffix = SEGMENT_SUFFIX

    save_every = 10.0  # seconds: written segments' hashes are saved this often, so a killed build's are kept

    def __init__(self, cache_dir: Path, memo: Optional[FingerprintMemo] = None) -> None:
        super().__init__(cache_dir)
        self.memo = memo if memo is not None else FingerprintMemo(None)
        self._prefix = os.path.join(str(self.root), "")
        self._saved_at = time.monotonic()

    def name(self, key: str) -> str:
        """The segment's path as a string: a warm start handles hundreds of them, Path objects cost more."""
        return f"{self._prefix}{key}{SEGMENT_SUFFIX}"

    @staticmethod
    def _memo_name(key: str) -> str:
        return f"segment:{key}"

    def write(self, key: str, batches: Iterable[Rows], facts: Optional[SegmentFacts],
              per_batch: int) -> tuple[str, int, int]:
        """Write a segment whole and durable under its key; (its content hash, remembered; rows; tokens).

        Without `facts` (the one segment of a format of whole examples) it is never reused.
        """
        tmp = self.temporary(key)
        try:
            rows, tokens = write_rows(tmp, batches, per_batch, {FACTS_KEY: facts.encode()} if facts else None)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())  # a manifest that names it must never outlive its bytes
            os.replace(tmp, self.path(key))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        digest = hash_mapped(self.path(key))
        # written privately and renamed: nobody else wrote it since, so the racy-stat rule does not apply
        self.memo.remember(self._memo_name(key), [stat_tuple(self.path(key))], digest)
        if time.monotonic() - self._saved_at >= self.save_every:  # the rerun of a killed build trusts them
            self._saved_at = time.monotonic()
            try:
                self.memo.save()
            except OSError:
                pass  # only not remembered yet
        return digest, rows, tokens

    def trusted(self, key: str) -> Optional[str]:
        """The content hash of a segment unchanged since it was written or found good; None otherwise."""
        try:
            return self.memo.get(self._memo_name(key), [stat_tuple(self.name(key))])
        except OSError:
            return None

    def check(self, key: str, expected: str) -> Optional[str]:
        """Why segment `key` does not hold the content hashed `expected`, or None. Hashes it only
        when its stat changed since it was last found good."""
        path = self.name(key)
        try:
            before = stat_tuple(path)
        except OSError:
            return f"{path} is missing"
        if self.memo.get(self._memo_name(key), [before]) == expected:
            return None
        start = time.time_ns()
        digest = hash_mapped(Path(path))
        if digest != expected:
            return (f"{path} was changed or damaged after it was written "
                    f"(content hash {digest[:16]}, manifest {str(expected)[:16]})")
        if stat_tuple(path) == before:
            self.memo.put(self._memo_name(key), [before], digest, start)
        return None

    def open(self, key: str) -> tuple[RowsFile, SegmentFacts]:
        """A stored segment and its facts; `RowsFileError` when it cannot be read."""
        rows = RowsFile(self.path(key))
        try:
            facts = SegmentFacts(**json.loads(rows.metadata[FACTS_KEY]))
        except (KeyError, ValueError, TypeError) as err:
            rows.close()
            raise RowsFileError(f"{self.path(key)}: no readable segment facts ({err})") from None
        return rows, facts


SEGMENT_READ_ERRORS: tuple[type[BaseException], ...] = (RowsFileError, OSError, *ARROW_READ_ERRORS)
