"""Build the rows of one split as row segments: pieces -> the split's documents -> pack -> Arrow.

The pieces come in file order (`pieces.pieces_in_order`: read from the store, or
tokenized on the way). Here the split's own choices act on them, exactly as on one
stream of lines: which documents it keeps (`val_fraction`), bad lines (`on_bad_record`),
examples longer than a row (`on_long_example`), `max_samples` (the first documents in
file order), then packing. The rows never depend on which pieces or segments were
cached, or on how many processes tokenized them.

Text is packed piece by piece into segments shared between caches (`segments.py`), so
a build after a change writes only the changed pieces' segments and the tail; a format
of whole examples is packed in one segment (best-fit decreasing needs every example).
This module knows nothing about keys of caches, locks or publishing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from medkor.data.encode import EncodedChunk, OnLongExample
from medkor.data.key import CacheRequest
from medkor.data.packing import learned_tokens, packer_for
from medkor.data.pieces import PieceRef
from medkor.data.rows import rows_per_batch
from medkor.data.segments import SegmentStore
from medkor.data.sources import DataError, ReadStats, Selection, no_records_error

# the pieces of some refs, in order (read from the store or tokenized on the way)
PieceSource = Callable[[list[PieceRef]], Iterator[tuple[PieceRef, EncodedChunk]]]


@dataclass
class BuildStats:
    """Counts of one build; `tokens` equals the sum of document lengths (checked)."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    learned: int = 0  # positions that are targets (not a document start, prompt or template)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    long_skipped: int = 0
    long_examples: list[str] = field(default_factory=list)
    max_length: int = 0

    segments_written: int = 0
    segments_reused: int = 0
    segments: list[tuple[str, int, str]] = field(default_factory=list)  # (key, rows, content hash), in order

    @property
    def fill_rate(self) -> float:
        """Useful tokens / row tokens: how much of `rows x max_length` holds data, not padding."""
        return self.tokens / (self.rows * self.max_length) if self.rows else 0.0


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(bos, eos, pad) ids; pad falls back to eos. A tokenizer without BOS or EOS cannot pack."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no {'BOS' if bos is None else 'EOS'} token; "
            "set bos_token and eos_token in its tokenizer_config.json"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return int(bos), int(eos), int(pad)


def whole_documents(tokenizer: Any) -> Any:
    """A copy of the Rust tokenizer without the truncation or padding its tokenizer.json
    may carry: either would silently cut or pad every cached document."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _in_file(ref: PieceRef, chunk: EncodedChunk, selection: Selection) -> tuple[Path, EncodedChunk]:
    """A piece's documents that the split keeps, with line numbers of the file."""
    shift = ref.first_line - 1
    keep = selection.keep_mask(chunk.draws, len(chunk.lengths))
    problems = [(line + shift, text) for line, text in chunk.problems]
    if keep.all():
        return ref.path, EncodedChunk(chunk.values, chunk.lengths, chunk.line_numbers + shift, chunk.records,
                                      problems, chunk.ignored)
    tokens = np.repeat(keep, chunk.lengths)
    return ref.path, EncodedChunk(chunk.values[tokens], chunk.lengths[keep], chunk.line_numbers[keep] + shift,
                                  chunk.records, problems, None if chunk.ignored is None else chunk.ignored[tokens])


def _drop_long(path: Path, result: EncodedChunk, limit: int, on_long: OnLongExample, selection: Selection,
               stats: ReadStats) -> EncodedChunk:
    """Examples longer than `limit` (never cut in two): an error naming the first, or skipped and counted."""
    long = result.lengths > limit
    if not long.any():
        return result
    first = int(result.line_numbers[int(np.argmax(long))])
    if on_long == "error":
        stats.record(path, [(line, p) for line, p in result.problems if line < first], selection.on_bad_record)
        size = int(result.lengths[int(np.argmax(long))])
        raise DataError(
            f"{path}:{first}: example has {size} tokens, more than max_length {limit}, and an example "
            "is never cut in two; raise max_length, shorten the record, or set on_long_example: skip"
        )
    for line, size in zip(result.line_numbers[long], result.lengths[long]):
        stats.record_long(path, int(line), int(size), limit)
    keep = np.repeat(~long, result.lengths)
    return EncodedChunk(result.values[keep], result.lengths[~long], result.line_numbers[~long],
                        result.records, result.problems, result.ignored[keep])


def split_documents(
    pieces: Iterable[tuple[PieceRef, EncodedChunk]],
    selection: Selection,
    stats: ReadStats,
    on_documents: Callable[[int], Any] = lambda count: None,
    max_example: Optional[int] = None,
    on_long_example: OnLongExample = "error",
) -> Iterator[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """The split's documents as (flat int32 tokens, lengths, ignored flags or None) batches, in file order.

    Bad lines raise `DataError` naming `file:line`, or are counted in `stats` when
    skipped; an example (any format but `text`) longer than `max_example` tokens is an
    error or skipped (`on_long_example`); taking stops after `max_samples` kept documents
    (bad lines after the last one taken are not looked at); a file without a single
    usable record is an error. `on_documents` is told each batch's size.
    """
    if on_long_example not in ("error", "skip"):
        raise ValueError(f"on_long_example must be 'error' or 'skip', got {on_long_example!r}")
    records = {Path(path): 0 for path in selection.files}
    kept, limit = 0, selection.max_samples
    for ref, chunk in pieces:
        path, result = _in_file(ref, chunk, selection)
        if result.ignored is not None and max_example is not None:
            result = _drop_long(path, result, max_example, on_long_example, selection, stats)
        values, lengths, problems, ignored = result.values, result.lengths, result.problems, result.ignored
        full = limit is not None and kept + len(lengths) >= limit
        if full:  # take the first documents only; lines after the last one taken are not read
            take = limit - kept
            last_line = int(result.line_numbers[take - 1])
            problems = [(line, problem) for line, problem in problems if line < last_line]
            tokens = int(lengths[:take].sum())
            values, lengths = values[:tokens], lengths[:take]
            ignored = None if ignored is None else ignored[:tokens]
        stats.record(path, problems, selection.on_bad_record)
        records[path] += result.records
        kept += len(lengths)
        on_documents(len(lengths))
        if len(lengths):
            yield values, lengths, ignored
        if full:
            return
    for path, count in records.items():
        if count == 0:
            raise no_records_error(path)


def finish(stats: BuildStats, read: ReadStats, split: str, selection: Selection, expected: int) -> BuildStats:
    stats.skipped, stats.skipped_examples = read.skipped, read.skipped_examples
    stats.long_skipped, stats.long_examples = read.long_skipped, read.long_examples
    if stats.documents == 0:
        raise DataError(
            f"split {split!r} of {', '.join(map(str, selection.files))} has no documents "
            "(max_samples, val_fraction or skipped records left none)"
        )
    if stats.tokens != expected:  # every token of every document must be in the rows
        raise RuntimeError(f"packing lost tokens: {expected} tokenized, {stats.tokens} written")
    return stats


def build_split(request: CacheRequest, refs: list[PieceRef], source: PieceSource, store: SegmentStore,
                claim: Callable[[list[str]], None], examples_key: str, reuse: bool = True) -> BuildStats:
    """Pack one split's documents from its pieces into segments of `store`; their list is in `stats.segments`.

    `claim` is told every segment key before it is written or reused (so `medkor cache gc`
    keeps it); `examples_key` names the one segment of a format of whole examples;
    `reuse: False` writes every segment again (`overwrite_cache`).
    """
    if request.selection.spec.examples:
        return _build_examples(request, source(refs), store, claim, examples_key)
    from medkor.data.text_rows import build_text  # it builds on this module

    return build_text(request, refs, source, store, claim, reuse)


def _build_examples(request: CacheRequest, pieces: Iterable[tuple[PieceRef, EncodedChunk]], store: SegmentStore,
                    claim: Callable[[list[str]], None], key: str) -> BuildStats:
    """Every kept example, best-fit decreasing into rows, written as one segment.

    An example longer than a row is an error or skipped (`on_long_example`).
    """
    selection, max_length, split = request.selection, request.max_length, request.split
    read = ReadStats()
    stats = BuildStats(max_length=max_length)
    packer = packer_for(True, max_length, request.packing)
    expected = 0
    claim([key])
    with tqdm(desc=f"Building {split}", unit=" docs") as progress:
        documents = split_documents(pieces, selection, read, progress.update, max_example=max_length,
                                    on_long_example=request.on_long_example)  # type: ignore[arg-type]

        def batches():
            nonlocal expected
            for values, lengths, ignored in documents:
                stats.documents += len(lengths)
                expected += len(values)
                yield from counted(packer.add(values, lengths, ignored))
            yield from counted(packer.finish())

        def counted(rows):
            for batch in rows:
                stats.learned += learned_tokens(batch)
                yield batch

        digest, stats.rows, stats.tokens = store.write(key, batches(), None, rows_per_batch(max_length))
    stats.segments = [(key, stats.rows, digest)]
    stats.segments_written = 1
    return finish(stats, read, split, selection, expected)
