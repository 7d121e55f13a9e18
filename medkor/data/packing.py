"""Cut tokenized documents into training rows, losing no token.

Packed: documents are concatenated and cut into rows of exactly `max_length`; a row
may start in the middle of a document. The tokens left after the last full row
become one final, shorter row (the collate pads it, labels -100), so every token of
every document is kept. Unpacked: each document is its own row, split into pieces
of at most `max_length` when longer.

Each row carries `doc_starts`, the offsets inside the row where a document begins,
so position ids can restart there and a document-aware attention mask can be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np


@dataclass
class Rows:
    """A batch of variable-length rows as flat arrays plus offsets (Arrow list layout)."""

    values: np.ndarray  # int32 tokens of all rows, concatenated
    offsets: np.ndarray  # int32, len(rows) + 1
    starts: np.ndarray  # int32 document starts inside each row, concatenated
    starts_offsets: np.ndarray  # int32, len(rows) + 1
    spans: Optional[np.ndarray] = None  # int32 [start, end) pairs never learned, inside each row, concatenated
    spans_offsets: Optional[np.ndarray] = None  # int32, len(rows) + 1; None: no such spans (text)

    def __post_init__(self) -> None:
        if self.spans is None:
            self.spans = np.zeros(0, dtype=np.int32)
            self.spans_offsets = np.zeros(len(self.offsets), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def tokens(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])


def _doc_offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


class RowPacker:
    """What every packer shares: rows of at most `max_length` tokens, several documents each
    (`packing`) or one; `add` documents batch by batch and collect rows, then `finish`."""

    def __init__(self, max_length: int, packing: bool = True) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.max_length = max_length
        self.packing = packing

    def add(self, values: np.ndarray, lengths: np.ndarray, ignored: Optional[np.ndarray] = None) -> Iterator[Rows]:
        """Documents as concatenated tokens, their lengths (and per-token ignored flags); yields finished rows."""
        raise NotImplementedError

    def finish(self) -> Iterator[Rows]:
        """The rows of what is still held."""
        raise NotImplementedError


def packer_for(examples: bool, max_length: int, packing: bool = True) -> RowPacker:
    """The packer of a format: a text stream (`Packer`) or whole examples (`ExamplePacker`)."""
    if examples:
        from medkor.data.example_packing import ExamplePacker  # it builds on this module

        return ExamplePacker(max_length, packing)
    return Packer(max_length, packing)


class Packer(RowPacker):
    """Streaming text packer: documents concatenated and cut at `max_length` (or one per row)."""

    def __init__(self, max_length: int, packing: bool = True) -> None:
        super().__init__(max_length, packing)
        self._values = np.zeros(0, dtype=np.int32)  # carried tokens (packing only)
        self._starts = np.zeros(0, dtype=np.int64)  # document starts inside the carry

    def add(self, values: np.ndarray, lengths: np.ndarray, ignored: Optional[np.ndarray] = None) -> Iterator[Rows]:
        """Documents given as concatenated tokens and their lengths; yields finished rows.

        Text has no ignored spans; `ignored` must be None.
        """
        if ignored is not None:
            raise ValueError("a text packer has no ignored spans; pack examples with ExamplePacker")
        values = np.asarray(values, dtype=np.int32)
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.sum() != len(values):
            raise ValueError("document lengths do not add up to the number of tokens")
        if not self.packing:
            if len(lengths):
                yield self._pieces(values, lengths)
            return
        starts = _doc_offsets(lengths)[:-1][lengths > 0] + len(self._values)
        self._values = np.concatenate([self._values, values])
        self._starts = np.concatenate([self._starts, starts])
        full = len(self._values) // self.max_length
        if full:
            yield self._cut(full)

    def finish(self) -> Iterator[Rows]:
        """The final partial row, if tokens remain (packing only)."""
        if self.packing and len(self._values):
            size = len(self._values)
            yield Rows(
                values=self._values,
                offsets=np.array([0, size], dtype=np.int32),
                starts=self._starts.astype(np.int32),
                starts_offsets=np.array([0, len(self._starts)], dtype=np.int32),
            )
            self._values = np.zeros(0, dtype=np.int32)
            self._starts = np.zeros(0, dtype=np.int64)

    def _cut(self, full: int) -> Rows:
        length = self.max_length
        cut = full * length
        inside = self._starts[self._starts < cut]
        counts = np.bincount(inside // length, minlength=full)
        rows = Rows(
            values=self._values[:cut],
            offsets=(np.arange(full + 1, dtype=np.int64) * length).astype(np.int32),
            starts=(inside % length).astype(np.int32),
            starts_offsets=_doc_offsets(counts).astype(np.int32),
        )
        self._values = self._values[cut:].copy()
        self._starts = self._starts[len(inside):] - cut
        return rows

    def _pieces(self, values: np.ndarray, lengths: np.ndarray) -> Rows:
        length = self.max_length
        lengths = lengths[lengths > 0]
        doc_off = _doc_offsets(lengths)
        pieces = (lengths + length - 1) // length
        doc_of_piece = np.repeat(np.arange(len(lengths)), pieces)
        first_piece = np.repeat(_doc_offsets(pieces)[:-1], pieces)
        index_in_doc = np.arange(len(doc_of_piece)) - first_piece
        piece_start = doc_off[doc_of_piece] + index_in_doc * length
        n = len(piece_start)
        return Rows(
            values=values,
            offsets=np.append(piece_start, len(values)).astype(np.int32),
            starts=np.zeros(n, dtype=np.int32),
            starts_offsets=np.arange(n + 1, dtype=np.int32),
        )


def learned_tokens(rows: Rows) -> int:
    """Positions of a batch of rows that are targets: not a document start, not inside an ignored span."""
    total = rows.tokens()
    if not total:
        return 0
    if not len(rows.spans):  # text: every position but the documents' first (starts are distinct positions)
        return total - len(rows.starts)
    base = rows.offsets[:-1].astype(np.int64) - int(rows.offsets[0])
    mark = np.zeros(total + 1, dtype=np.int64)
    span_rows = np.repeat(np.arange(len(rows)), np.diff(rows.spans_offsets) // 2)
    begins = rows.spans[0::2].astype(np.int64) + base[span_rows]
    ends = rows.spans[1::2].astype(np.int64) + base[span_rows]
    np.add.at(mark, begins, 1)
    np.add.at(mark, ends, -1)
    learned = np.cumsum(mark[:-1]) == 0
    start_rows = np.repeat(np.arange(len(rows)), np.diff(rows.starts_offsets))
    learned[rows.starts.astype(np.int64) + base[start_rows]] = False
    return int(learned.sum())
