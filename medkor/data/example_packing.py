"""Pack whole examples into rows: best-fit decreasing, never an example cut in two.

Examples (dictionary entries, chat turns, exam questions) are short and must stay
whole, or a completion would be trained without its prompt. Within a window of
examples (about `window_tokens`), the longest example goes first into the row with
the least room that still holds it, else into a new row. The window bounds memory
and keeps the build streaming; only the last rows of a window are less full.

A row records where each example starts (`starts`: position ids restart there) and
the [start, end) spans of its tokens that are never learned (`spans`: prompt and
template tokens).
"""

from __future__ import annotations

import bisect
from typing import Iterator, Optional

import numpy as np

from medkor.data.packing import RowPacker, Rows, _doc_offsets

WINDOW_TOKENS = 1 << 23  # examples per best-fit pass: a few tens of MB of ids


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of example indices whose lengths sum to at most `capacity`, longest examples placed first.

    Ties keep input order, so the result depends on the examples only. Every length
    must be at most `capacity`.
    """
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"an example of {int(lengths.max())} tokens does not fit a row of {capacity}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    room: list[tuple[int, int]] = []  # sorted (free tokens, bin) of the bins that still have room
    bins: list[list[int]] = []
    for index in order.tolist():
        size = int(lengths[index])
        at = bisect.bisect_left(room, (size, -1))
        if at < len(room):
            free, target = room.pop(at)
        else:
            free, target = capacity, len(bins)
            bins.append([])
        bins[target].append(index)
        if free - size > 0:
            bisect.insort(room, (free - size, target))
    return bins


def ignored_spans(ignored: np.ndarray, row_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of True in a flat mask as [start, end) pairs local to their rows, and per-row pair offsets."""
    ignored = np.asarray(ignored, dtype=bool)
    n = len(ignored)
    row_start = np.zeros(n, dtype=bool)
    row_start[row_offsets[:-1][row_offsets[:-1] < n]] = True
    row_end = np.zeros(n, dtype=bool)
    row_end[row_offsets[1:][row_offsets[1:] > 0] - 1] = True
    before = np.concatenate([[False], ignored[:-1]])
    after = np.concatenate([ignored[1:], [False]])
    begins = np.flatnonzero(ignored & (row_start | ~before))
    ends = np.flatnonzero(ignored & (row_end | ~after)) + 1
    row_of = np.searchsorted(row_offsets, begins, side="right") - 1
    pairs = np.empty(2 * len(begins), dtype=np.int64)
    pairs[0::2] = begins - row_offsets[row_of]
    pairs[1::2] = ends - row_offsets[row_of]
    counts = np.bincount(row_of, minlength=len(row_offsets) - 1)
    return pairs.astype(np.int32), (2 * _doc_offsets(counts)).astype(np.int32)


def gather_rows(values: np.ndarray, lengths: np.ndarray, ignored: np.ndarray, bins: list[list[int]]) -> Rows:
    """Rows holding the examples of each bin in turn (bins in order, examples in bin order)."""
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=sum(map(len, bins)))
    sizes = lengths[order]
    source = _doc_offsets(lengths)[:-1][order]
    placed = _doc_offsets(sizes)
    take = np.repeat(source - placed[:-1], sizes) + np.arange(int(placed[-1]))
    per_row = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    first = _doc_offsets(per_row)  # index into `order` of each row's first example
    row_offsets = placed[first]
    starts = placed[:-1] - np.repeat(row_offsets[:-1], per_row)
    spans, spans_offsets = ignored_spans(ignored[take], row_offsets)
    return Rows(
        values=values[take].astype(np.int32),
        offsets=row_offsets.astype(np.int32),
        starts=starts.astype(np.int32),
        starts_offsets=first.astype(np.int32),
        spans=spans,
        spans_offsets=spans_offsets,
    )


class ExamplePacker(RowPacker):
    """Streaming packer of whole examples: `add` batches of them, collect rows, then `finish`.

    Args:
        max_length: Tokens per row; every example must fit (the caller drops or refuses longer ones).
        packing: Several examples per row (best-fit decreasing); False: one example per row.
        window_tokens: Examples gathered before a best-fit pass.
    """

    def __init__(self, max_length: int, packing: bool = True, window_tokens: int = WINDOW_TOKENS) -> None:
        super().__init__(max_length, packing)
        self.window_tokens = window_tokens
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_tokens = 0

    def add(self, values: np.ndarray, lengths: np.ndarray, ignored: Optional[np.ndarray] = None) -> Iterator[Rows]:
        """Examples as concatenated tokens, their lengths and per-token ignored flags; yields finished rows."""
        if ignored is None:
            ignored = np.zeros(len(values), dtype=bool)
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.sum() != len(values) or len(ignored) != len(values):
            raise ValueError("example lengths and ignored flags do not add up to the number of tokens")
        if len(lengths) and int(lengths.max()) > self.max_length:
            raise ValueError(f"an example of {int(lengths.max())} tokens is longer than max_length {self.max_length}")
        self._pending.append((np.asarray(values, dtype=np.int32), lengths, np.asarray(ignored, dtype=bool)))
        self._pending_tokens += len(values)
        if self._pending_tokens >= self.window_tokens:
            yield from self._flush()

    def finish(self) -> Iterator[Rows]:
        """Rows of the examples still gathered."""
        yield from self._flush()

    def _flush(self) -> Iterator[Rows]:
        if not self._pending:
            return
        values = np.concatenate([v for v, _, _ in self._pending])
        lengths = np.concatenate([n for _, n, _ in self._pending])
        ignored = np.concatenate([m for _, _, m in self._pending])
        self._pending, self._pending_tokens = [], 0
        keep = lengths > 0
        lengths = lengths[keep]
        if not len(lengths):
            return
        if self.packing:
            bins = best_fit_decreasing(lengths, self.max_length)
        else:
            bins = [[i] for i in range(len(lengths))]
        yield gather_rows(values, lengths, ignored, bins)
