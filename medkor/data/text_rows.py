"""Text rows piece by piece: each piece's kept documents packed on their own into a row segment,
then one tail segment of every piece's leftover (see `segments.py`).

A piece whose segment is stored and trusted is not even read: the segment's facts (its
documents, tokens, bad lines, leftover) stand in for it. `max_samples` ends inside one
piece, whose first documents make a segment of their own; a build after any change
therefore writes the segments of changed pieces and the tail, and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from medkor.data.build import BuildStats, PieceSource, finish
from medkor.data.encode import EncodedChunk
from medkor.data.key import CacheRequest
from medkor.data.packing import Packer, Rows, learned_tokens
from medkor.data.pieces import PieceDamaged, PieceRef, PieceStore
from medkor.data.rows import rows_per_batch
from medkor.data.segments import (
    SEGMENT_READ_ERRORS, SegmentFacts, SegmentStore, layout_key, segment_key, tail_key,
)
from medkor.data.sources import ReadStats, Selection, no_records_error

log = logging.getLogger("medkor.data")


@dataclass
class _Piece:
    """One piece's segment as a build uses it."""

    key: str
    digest: str
    facts: SegmentFacts
    leftover: Optional[tuple[np.ndarray, np.ndarray]]  # (ids, document starts) for the tail
    written: bool


def _pack_piece(chunk: EncodedChunk, selection: Selection, take: Optional[int], max_length: int,
                packing: bool) -> tuple[list[Rows], SegmentFacts]:
    """A piece's kept documents (its first `take` of them) packed on their own: rows, then the leftover row."""
    keep = selection.keep_mask(chunk.draws, len(chunk.lengths))
    values, lengths, lines = chunk.values, chunk.lengths, chunk.line_numbers
    if not keep.all():
        values, lengths, lines = values[np.repeat(keep, lengths)], lengths[keep], lines[keep]
    problems = chunk.problems
    if take is not None:  # max_samples ends here: lines after the last document taken are not looked at
        last_line = int(lines[take - 1])
        problems = [(line, problem) for line, problem in problems if line < last_line]
        values, lengths = values[: int(lengths[:take].sum())], lengths[:take]
    packer = Packer(max_length, packing)
    full = list(packer.add(values, lengths)) if len(lengths) else []
    leftover = list(packer.finish())
    facts = SegmentFacts(
        rows=sum(len(rows) for rows in full), leftover=bool(leftover), documents=len(lengths), tokens=len(values),
        row_tokens=sum(rows.tokens() for rows in full), learned=sum(learned_tokens(rows) for rows in full),
        records=chunk.records, problems=[[int(line), str(problem)] for line, problem in problems],
    )
    return full + leftover, facts


def _stored(store: SegmentStore, key: str, digest: Optional[str]) -> Optional[_Piece]:
    """A trusted stored segment with its facts and leftover; None when it must be written (again)."""
    if digest is None:
        return None
    try:
        rows, facts = store.open(key)
    except SEGMENT_READ_ERRORS as err:
        log.warning("%s; writing it again", err)
        return None
    try:
        leftover = None
        if facts.leftover:
            ids, starts, _ = rows[len(rows) - 1]
            leftover = (np.array(ids), np.array(starts))
    except SEGMENT_READ_ERRORS as err:
        log.warning("%s; writing it again", err)
        return None
    finally:
        rows.close()
    return _Piece(key, digest, facts, leftover, written=False)


def _write_piece(store: SegmentStore, key: str, chunk: EncodedChunk, request: CacheRequest,
                 take: Optional[int]) -> _Piece:
    rows, facts = _pack_piece(chunk, request.selection, take, request.max_length, request.packing)
    digest, _, _ = store.write(key, rows, facts, rows_per_batch(request.max_length))
    leftover = (rows[-1].values, rows[-1].starts) if facts.leftover else None
    return _Piece(key, digest, facts, leftover, written=True)


def _tail(store: SegmentStore, key: str, leftovers: list[tuple[np.ndarray, np.ndarray]], max_length: int,
          reuse: bool) -> _Piece:
    """Every piece's leftover packed into full rows (and the split's one short row); each leftover
    begins a document, so nothing attends or counts positions across two of them."""
    stored = _stored(store, key, store.trusted(key) if reuse else None)
    if stored is not None:
        return stored
    values = np.concatenate([ids for ids, _ in leftovers]).astype(np.int32)
    lengths = []
    for ids, starts in leftovers:
        bounds = np.unique(np.concatenate([[0], starts.astype(np.int64)]))
        lengths.append(np.diff(np.append(bounds, len(ids))))
    packer = Packer(max_length, True)
    rows = list(packer.add(values, np.concatenate(lengths))) + list(packer.finish())
    facts = SegmentFacts(rows=sum(len(r) for r in rows), tokens=len(values), row_tokens=len(values),
                         learned=sum(learned_tokens(r) for r in rows))
    digest, _, _ = store.write(key, rows, facts, rows_per_batch(max_length))
    return _Piece(key, digest, facts, None, written=True)


def build_text(request: CacheRequest, refs: list[PieceRef], source: PieceSource, store: SegmentStore,
                claim: Callable[[list[str]], None], reuse: bool) -> BuildStats:
    """Text: each piece's segment reused (its piece not even read) or packed and written, then the tail."""
    selection, max_length, split = request.selection, request.max_length, request.split
    layout = layout_key(request)
    keys = [segment_key(layout, ref.key) for ref in refs]
    claim(keys)
    known = {key: store.trusted(key) for key in set(keys)} if reuse else {}
    need = [ref for ref, key in zip(refs, keys) if known.get(key) is None]
    pending = source(need)  # tokenized ahead by worker processes, in order

    def chunk_of(ref: PieceRef, listed: bool) -> EncodedChunk:
        if listed:
            return next(pending)[1]
        for _, chunk in source([ref]):
            return chunk
        raise AssertionError("a piece source yields every piece asked for")

    read, stats = ReadStats(), BuildStats(max_length=max_length)
    records = {Path(path): 0 for path in selection.files}
    kept, limit = 0, selection.max_samples
    leftovers: list[tuple[np.ndarray, np.ndarray]] = []
    used: list[str] = []  # every segment taken, rows or not: the tail's key
    expected, done = 0, False
    with tqdm(desc=f"Building {split}", unit=" docs") as progress:
        try:
            for ref, key in zip(refs, keys):
                listed = known.get(key) is None
                piece = None if listed else _stored(store, key, known[key])
                take = None
                if piece is None or (limit is not None and kept + piece.facts.documents >= limit):
                    chunk = chunk_of(ref, listed)
                    count = int(selection.keep_mask(chunk.draws, len(chunk.lengths)).sum())
                    if limit is not None and kept + count >= limit:  # max_samples ends in this piece
                        take, key = limit - kept, segment_key(layout, ref.key, limit - kept)
                        claim([key])
                        piece = _stored(store, key, store.trusted(key) if reuse else None)
                    if piece is None or piece.key != key:
                        piece = _write_piece(store, key, chunk, request, take)
                facts = piece.facts
                read.record(ref.path, [(line + ref.first_line - 1, text) for line, text in facts.problems],
                            selection.on_bad_record)
                records[ref.path] += facts.records
                kept += facts.documents
                stats.documents += facts.documents
                stats.rows += facts.rows
                stats.tokens += facts.row_tokens
                stats.learned += facts.learned
                expected += facts.tokens
                stats.segments_written += piece.written
                stats.segments_reused += not piece.written
                used.append(piece.key)
                # listed even without rows: the cache needs its leftover again for the tail (and gc keeps it)
                stats.segments.append((piece.key, facts.rows, piece.digest))
                if piece.leftover is not None:
                    leftovers.append(piece.leftover)
                progress.update(facts.documents)
                if take is not None:
                    done = True
                    break
        finally:
            close = getattr(pending, "close", None)
            if close is not None:
                close()
    if not done:
        for path, count in records.items():
            if count == 0:
                raise no_records_error(path)
    if leftovers:
        key = tail_key(layout, used)
        claim([key])
        tail = _tail(store, key, leftovers, max_length, reuse)
        stats.rows += tail.facts.rows
        stats.tokens += tail.facts.row_tokens
        stats.learned += tail.facts.learned
        stats.segments.append((tail.key, tail.facts.rows, tail.digest))
        stats.segments_written += tail.written
        stats.segments_reused += not tail.written
    return finish(stats, read, split, selection, expected)


def write_segments(request: CacheRequest, refs: list[PieceRef], pieces: PieceStore, store: SegmentStore,
                   claim: Callable[[list[str]], None]) -> int:
    """Pack the segments of `refs` (whole pieces of a text split) that are not stored yet; how many were written.

    For ranks that share a build: each packs its share, and the build reuses them. A
    piece that is missing or damaged is left to the build, which tokenizes it again.
    """
    layout = layout_key(request)
    todo = {segment_key(layout, ref.key): ref for ref in refs}
    claim(list(todo))
    written = 0
    for key, ref in todo.items():
        if store.trusted(key) is not None:
            continue
        try:
            chunk = pieces.read(ref.key)
        except (PieceDamaged, FileNotFoundError):
            continue
        _write_piece(store, key, chunk, request, None)
        written += 1
    return written
