"""Read and write the rows file of a cache: Arrow IPC, memory-mapped on load.

Schema: `input_ids: list<int32>`, `doc_starts: list<int32>` (where documents begin
inside the row) and `ignored_spans: list<int32>` ([start, end) pairs of positions that
are never learned: prompt and template tokens; empty for plain text). Every record batch but the last holds the same number of rows
(schema metadata `rows_per_batch`, chosen for about 16 M tokens, so no list column
overflows 32-bit offsets). Row i is then in batch i // rows_per_batch, and opening a
file reads its footer and last batch only, however large the corpus.
"""

from __future__ import annotations

from array import array
from collections import deque
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa

from medkor.data.packing import Rows
from medkor.data.sources import DataError

SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("doc_starts", pa.list_(pa.int32())),
    ("ignored_spans", pa.list_(pa.int32())),
])
RECORD_BATCH_TOKENS = 1 << 24  # ~64 MB of ids per record batch; well under int32 offsets
ROWS_PER_BATCH_KEY = b"rows_per_batch"


def rows_per_batch(max_length: int) -> int:
    """Rows per record batch for rows of at most `max_length` tokens."""
    return max(1, RECORD_BATCH_TOKENS // max_length)


def _int32(values: np.ndarray) -> pa.Array:
    """An Arrow int32 array over a numpy array's memory (`pa.array` would import pandas, ~1.5 s, to check its type)."""
    values = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


class _Reused:
    """One int32 buffer per column, grown when needed and reused by every record batch: fresh pages
    cost more than the copy into them (the kernel zeroes each one), so a build touches them once."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def take(self, name: str, size: int) -> np.ndarray:
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < size:
            buffer = self.buffers[name] = np.empty(max(size, 2 * len(buffer) if buffer is not None else size),
                                                   dtype=np.int32)
        return buffer[:size]


def _from_zero(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A list column's (values, offsets) with the offsets starting at 0 and only the values they cover."""
    first = int(offsets[0])
    if first:
        offsets = offsets - first
    return values[first : first + int(offsets[-1])], offsets


def _column(parts: list[tuple[np.ndarray, np.ndarray]], name: str, reused: _Reused) -> pa.Array:
    """One list column of several (values, offsets-from-zero) parts, gathered into reused buffers."""
    if len(parts) == 1:
        values, offsets = parts[0]
    else:
        values = reused.take(f"{name}.values", sum(len(v) for v, _ in parts))
        np.concatenate([v for v, _ in parts], out=values)
        offsets = reused.take(f"{name}.offsets", sum(len(o) - 1 for _, o in parts) + 1)
        offsets[0] = base = at = 0
        for part_values, part_offsets in parts:
            count = len(part_offsets) - 1
            np.add(part_offsets[1:], base, out=offsets[at + 1 : at + 1 + count])
            base, at = base + len(part_values), at + count
    return pa.ListArray.from_arrays(_int32(offsets), _int32(values))


def write_rows(path: Path, batches: Iterable[Rows], per_batch: int,
               metadata: Optional[dict[bytes, bytes]] = None) -> tuple[int, int]:
    """Write row batches to `path` in record batches of exactly `per_batch` rows
    (the last may hold fewer), `metadata` added to the schema's; returns (rows, tokens)."""
    rows = tokens = 0
    schema = SCHEMA.with_metadata({**(metadata or {}), ROWS_PER_BATCH_KEY: str(per_batch).encode()})
    pending: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per part: its three columns
    pending_rows = 0
    reused = _Reused()

    def write(writer: pa.ipc.RecordBatchFileWriter, limit: Optional[int]) -> None:
        nonlocal pending, pending_rows
        take, chosen, rest = pending_rows if limit is None else limit, [], []
        left = take
        for part in pending:
            count = len(part[0][1]) - 1
            if left >= count:
                chosen.append(part)
            elif left == 0:
                rest.append(part)
            else:  # cut this part at a row: the first `left` rows now, the others next time
                chosen.append([(v[: int(o[left])], o[: left + 1]) for v, o in part])
                rest.append([_from_zero(v, o[left:]) for v, o in part])
            left = max(0, left - count)
        columns = [_column([part[c] for part in chosen], name, reused)
                   for c, name in enumerate(("ids", "starts", "spans"))]
        writer.write_batch(pa.record_batch(columns, schema=schema))  # written out before the buffers are reused
        pending, pending_rows = rest, pending_rows - take

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            if not len(batch):
                continue
            pending.append([_from_zero(np.asarray(batch.values), np.asarray(batch.offsets)),
                            _from_zero(np.asarray(batch.starts), np.asarray(batch.starts_offsets)),
                            _from_zero(np.asarray(batch.spans), np.asarray(batch.spans_offsets))])
            pending_rows += len(batch)
            rows += len(batch)
            tokens += int(batch.offsets[-1] - batch.offsets[0])
            while pending_rows >= per_batch:
                write(writer, per_batch)
        if pending_rows:
            write(writer, None)
    return rows, tokens


class RowsFileError(DataError):
    """A rows file that cannot be read (damaged, truncated, another layout); the message says what to run."""


def unreadable(path: Path, problem: object, cache: Optional[Path] = None) -> RowsFileError:
    """The one-line error for a rows file that cannot be used, with the commands that repair its cache.

    `cache` is the published cache folder (`CACHE_DIR/<split>-<key>`) whose rows these are
    (default: the file's folder): `medkor cache` takes its parent and name, and
    `medkor prepare` builds the removed cache again.
    """
    folder = Path(cache) if cache is not None else path.parent
    return RowsFileError(
        f"{path}: cannot read this cache rows file ({' '.join(str(problem).split())}); "
        f"`medkor cache verify {folder.parent} {folder.name}` shows the damage, "
        f"`medkor cache rm {folder.parent} {folder.name}` removes the cache, "
        "then `medkor prepare --config ...` (or the next fit) builds it again"
    )


# what pyarrow raises for a damaged file: ArrowInvalid (a ValueError), OSError for a footer that fails
# flatbuffer verification or a file that cannot be mapped, other ArrowExceptions for the rest
ARROW_READ_ERRORS = (pa.ArrowException, OSError, ValueError, IndexError)


def _view(array: pa.Array, dtype: type) -> np.ndarray:
    """Zero-copy numpy view of a null-free primitive Arrow array.

    Built from the data buffer directly: `Array.to_numpy` imports pandas on first
    use (about 0.4 s), which alone would break the warm-start budget.
    """
    if array.null_count:
        raise ValueError("unexpected nulls")
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * itemsize)


def _check_offsets(path: Path, index: int, part: tuple[np.ndarray, ...], cache: Optional[Path] = None) -> None:
    """Each list column's offsets must rise and end inside its values: a damaged batch is named here,
    not as a slice past the end (or a negative length) in a data loader worker later. Cheap: one
    pass over the offsets, once per record batch."""
    for values, offsets in ((part[0], part[1]), (part[2], part[3]), (part[4], part[5])):
        if offsets.size == 0 or offsets[0] < 0 or offsets[-1] > values.size or (np.diff(offsets) < 0).any():
            raise unreadable(path, f"record batch {index}: list offsets out of order or past the data", cache)


class RowsFile:
    """A memory-mapped rows file: `len()` rows, `[i]` -> (input_ids, doc_starts, ignored_spans) int32 arrays."""

    def __init__(self, path: str | Path, cache: Optional[Path] = None) -> None:
        self.path = Path(path)
        self.cache = cache  # the cache folder these rows belong to, for the repair commands of an error
        self._open()

    # DataLoader workers started by spawn get the path and map the file themselves
    def __getstate__(self) -> dict:
        return {"path": self.path, "cache": self.cache}

    def __setstate__(self, state: dict) -> None:
        self.path, self.cache = state["path"], state.get("cache")
        self._open()

    def _open(self) -> None:
        try:
            self._source = pa.memory_map(str(self.path), "r")
            self._reader = pa.ipc.open_file(self._source)
        except ARROW_READ_ERRORS as err:
            raise unreadable(self.path, err, self.cache) from err
        schema = self._reader.schema
        self.metadata: dict[bytes, bytes] = dict(schema.metadata or {})
        if schema != SCHEMA or ROWS_PER_BATCH_KEY not in (schema.metadata or {}):
            raise unreadable(self.path, f"unexpected schema {schema}; rebuild the cache", self.cache)
        try:
            self._per_batch = int(schema.metadata[ROWS_PER_BATCH_KEY])
        except ValueError:
            found = schema.metadata[ROWS_PER_BATCH_KEY].decode(errors="replace")
            raise unreadable(self.path, f"rows_per_batch {found!r} is not a number", self.cache) from None
        if self._per_batch < 1:
            raise unreadable(self.path, f"rows_per_batch is {self._per_batch}", self.cache)
        batches = self._reader.num_record_batches
        self._parts: list[Optional[tuple[np.ndarray, ...]]] = [None] * batches
        self._len = (batches - 1) * self._per_batch + self._part(batches - 1)[1].size - 1 if batches else 0

    @property
    def batches(self) -> int:
        return len(self._parts)

    def part(self, index: int) -> tuple[np.ndarray, ...]:
        """Record batch `index` as (values, offsets, starts, starts_offsets, spans, spans_offsets), checked."""
        return self._parts[index] or self._part(index)

    def _part(self, index: int) -> tuple[np.ndarray, ...]:
        """(values, offsets, starts, starts_offsets, spans, spans_offsets) views of a record batch, read on first use."""
        part = self._parts[index]
        if part is None:
            try:
                batch = self._reader.get_batch(index)
                ids, starts, spans = batch.column(0), batch.column(1), batch.column(2)
                # offsets copied out of the mapping: a few bytes per row, read at every row; packed together
                # in memory they stay cached, where a thousand segments' mapped pages would not
                part = (_view(ids.values, np.int32), _view(ids.offsets, np.int32).copy(),
                        _view(starts.values, np.int32), _view(starts.offsets, np.int32).copy(),
                        _view(spans.values, np.int32), _view(spans.offsets, np.int32).copy())
            except ARROW_READ_ERRORS as err:
                raise unreadable(self.path, f"record batch {index}: {err}", self.cache) from err
            _check_offsets(self.path, index, part, self.cache)
            self._parts[index] = part
        return part

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self.row(index)

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row `index`, known to be in range (no checks: the loader's hot path)."""
        batch, local = divmod(index, self._per_batch)
        values, offsets, starts, starts_offsets, spans, spans_offsets = self._parts[batch] or self._part(batch)
        return (
            values[offsets[local] : offsets[local + 1]],
            starts[starts_offsets[local] : starts_offsets[local + 1]],
            spans[spans_offsets[local] : spans_offsets[local + 1]],
        )

    def _all_parts(self) -> list[tuple[np.ndarray, ...]]:
        return [self._part(i) for i in range(len(self._parts))]

    def token_count(self) -> int:
        return int(sum(int(off[-1] - off[0]) for _, off, *_ in self._all_parts()))

    def row_lengths(self) -> np.ndarray:
        parts = self._all_parts()
        return np.concatenate([np.diff(off) for _, off, *_ in parts]) if parts else np.zeros(0, np.int64)

    def close(self) -> None:
        """Unmap the file (rows already handed out keep their memory alive)."""
        self._parts = [None] * len(self._parts)
        self._source.close()


def _open_files_allowed(wanted: int) -> int:
    """How many files this process may keep open for rows: the soft limit is raised towards the hard one
    when `wanted` needs it (a 1.5 GB corpus has ~1,500 segments; many systems start at 1,024)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted + 512:
            goal = wanted + 512 if hard == resource.RLIM_INFINITY else min(hard, wanted + 512)
            if goal > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (goal, hard))
                soft = goal
        return wanted if soft == resource.RLIM_INFINITY else max(64, soft - 512)  # the rest for everything else
    except (ImportError, ValueError, OSError):
        return 256


class CacheRows:
    """A cache's rows: the first `rows` rows of each segment file, in order; `len()`, `[i]` and the
    counts of `RowsFile`.

    A segment file is mapped when one of its rows is first read, and stays mapped: the
    process's open-file limit is raised to fit them all where the hard limit allows;
    otherwise at most `open_limit` stay, the first opened closed first.
    """

    def __init__(self, segments: list[tuple[str | Path, int]], cache: Optional[Path] = None,
                 open_limit: Optional[int] = None) -> None:
        self.segments = [(str(path), int(rows)) for path, rows in segments]
        self.cache = cache
        self.open_limit = open_limit
        self._setup()

    def __getstate__(self) -> dict:  # DataLoader workers map the files themselves
        return {"segments": self.segments, "cache": self.cache, "open_limit": self.open_limit}

    def __setstate__(self, state: dict) -> None:
        self.segments, self.cache, self.open_limit = state["segments"], state["cache"], state["open_limit"]
        self._setup()

    def _setup(self) -> None:
        self._firsts = [0]
        for _, rows in self.segments:
            self._firsts.append(self._firsts[-1] + rows)
        self._files: list[Optional[RowsFile]] = [None] * len(self.segments)
        # a segment of one record batch (most are) as its arrays, read without a call into RowsFile
        self._single: list[Optional[tuple[np.ndarray, ...]]] = [None] * len(self.segments)
        self._opened: deque[int] = deque()  # open segments, oldest first
        self._limit: Optional[int] = None  # decided on the first open
        self._segment_of: Optional[array] = None

    def segment(self, index: int) -> RowsFile:
        """Segment `index`, mapped (and its row count checked) on first use."""
        opened = self._files[index]
        if opened is not None:
            return opened
        path, rows = self.segments[index]
        opened = RowsFile(path, self.cache)
        if len(opened) < rows:
            raise unreadable(opened.path, f"{len(opened)} rows, the cache's manifest says at least {rows}", self.cache)
        if self._limit is None:
            self._limit = self.open_limit or _open_files_allowed(len(self.segments))
        while len(self._opened) >= self._limit:
            oldest = self._opened.popleft()
            self._files[oldest].close()  # type: ignore[union-attr]
            self._files[oldest] = self._single[oldest] = None
        self._files[index] = opened
        if opened.batches == 1:
            self._single[index] = opened.part(0)
        self._opened.append(index)
        return opened

    def __len__(self) -> int:
        return self._firsts[-1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._segment_of is None:  # row -> segment, built on first use: one lookup instead of a search
            self._segment_of = array("i", np.repeat(np.arange(len(self.segments), dtype=np.int32),
                                                    [rows for _, rows in self.segments]).tobytes())
        try:
            at = self._segment_of[index]
        except IndexError:
            raise IndexError(f"row {index} out of range for {len(self)} rows") from None
        if index < 0:
            index += self._firsts[-1]
        part = self._single[at]
        if part is None:
            return (self._files[at] or self.segment(at)).row(index - self._firsts[at])
        local = index - self._firsts[at]
        values, offsets, starts, starts_offsets, spans, spans_offsets = part
        return (values[offsets[local] : offsets[local + 1]], starts[starts_offsets[local] : starts_offsets[local + 1]],
                spans[spans_offsets[local] : spans_offsets[local + 1]])

    def row_lengths(self) -> np.ndarray:
        lengths = [self.segment(i).row_lengths()[:rows] for i, (_, rows) in enumerate(self.segments) if rows]
        return np.concatenate(lengths) if lengths else np.zeros(0, np.int64)

    def token_count(self) -> int:
        return int(self.row_lengths().sum())
