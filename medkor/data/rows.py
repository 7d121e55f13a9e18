"""Read and write the rows file of a cache: Arrow IPC, memory-mapped on load.

Schema: `input_ids: list<int32>` and `doc_starts: list<int32>` (where documents begin
inside the row). The file is written in record batches of about 16 M tokens, so no
list column overflows 32-bit offsets; loading maps the file and indexes rows without copying.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from medkor.data.packing import Rows

ROWS_FILE = "rows.arrow"
SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_starts", pa.list_(pa.int32()))])


RECORD_BATCH_TOKENS = 1 << 24  # ~64 MB of ids per record batch; well under int32 offsets


def write_rows(path: Path, batches: Iterable[Rows]) -> tuple[int, int]:
    """Write row batches to `path`; returns (rows, tokens).

    Packer output is coalesced into record batches of about `RECORD_BATCH_TOKENS`:
    opening the file reads every batch's metadata, so few large batches keep a warm
    load constant-time as the corpus grows.
    """
    rows = tokens = 0
    pending: list[tuple[pa.Array, pa.Array]] = []
    pending_tokens = 0

    def flush(writer: pa.ipc.RecordBatchFileWriter) -> None:
        nonlocal pending, pending_tokens
        if pending:
            ids = pa.concat_arrays([ids for ids, _ in pending])
            starts = pa.concat_arrays([starts for _, starts in pending])
            writer.write_batch(pa.record_batch([ids, starts], schema=SCHEMA))
        pending, pending_tokens = [], 0

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        for batch in batches:
            if not len(batch):
                continue
            ids = pa.ListArray.from_arrays(pa.array(batch.offsets, pa.int32()), pa.array(batch.values, pa.int32()))
            starts = pa.ListArray.from_arrays(
                pa.array(batch.starts_offsets, pa.int32()), pa.array(batch.starts, pa.int32())
            )
            batch_tokens = int(batch.offsets[-1] - batch.offsets[0])
            if pending and pending_tokens + batch_tokens > RECORD_BATCH_TOKENS:
                flush(writer)
            pending.append((ids, starts))
            pending_tokens += batch_tokens
            rows += len(batch)
            tokens += batch_tokens
        flush(writer)
    return rows, tokens


def _view(array: pa.Array, dtype: type) -> np.ndarray:
    """Zero-copy numpy view of a null-free primitive Arrow array.

    Built from the data buffer directly: `Array.to_numpy` imports pandas on first
    use (about 0.4 s), which alone would break the warm-start budget.
    """
    if array.null_count:
        raise ValueError("unexpected nulls in a rows file")
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * itemsize)


class RowsFile:
    """A memory-mapped rows file: `len()` rows, `[i]` -> (input_ids, doc_starts) int32 arrays."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._open()

    # DataLoader workers started by spawn get the path and map the file themselves
    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()

    def _open(self) -> None:
        self._source = pa.memory_map(str(self.path), "r")
        reader = pa.ipc.open_file(self._source)
        if reader.schema != SCHEMA:
            raise ValueError(f"{self.path}: unexpected schema {reader.schema}")
        self._parts = []
        counts = []
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            ids, starts = batch.column(0), batch.column(1)
            self._parts.append(
                (
                    _view(ids.values, np.int32),
                    _view(ids.offsets, np.int32),
                    _view(starts.values, np.int32),
                    _view(starts.offsets, np.int32),
                )
            )
            counts.append(len(batch))
        self._ends = np.cumsum(counts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        part = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[part - 1]) if part else 0)
        values, offsets, starts, starts_offsets = self._parts[part]
        return (
            values[offsets[local] : offsets[local + 1]],
            starts[starts_offsets[local] : starts_offsets[local + 1]],
        )

    def token_count(self) -> int:
        return int(sum(int(off[-1] - off[0]) for _, off, _, _ in self._parts))

    def row_lengths(self) -> np.ndarray:
        return np.concatenate([np.diff(off) for _, off, _, _ in self._parts]) if self._parts else np.zeros(0, np.int64)
