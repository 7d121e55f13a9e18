"""The rows file: fixed-size record batches, rows read back exactly across batch boundaries."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa

import pytest

from medkor.data.packing import Packer
from medkor.data.rows import SCHEMA, RowsFile, rows_per_batch, write_rows


def test_rows_round_trip_across_record_batches(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=60)
    values = rng.integers(0, 1000, size=int(lengths.sum()), dtype=np.int32)
    packer = Packer(16, packing=True)
    produced = [r for i in range(0, 60, 7) for r in packer.add(values[lengths[:i].sum():lengths[: i + 7].sum()], lengths[i : i + 7])]
    produced += list(packer.finish())
    path = tmp_path / "rows.arrow"
    n_rows, n_tokens = write_rows(path, produced, per_batch=3)  # several record batches, cut mid-Packer-batch
    assert n_tokens == len(values)
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    assert sizes[:-1] == [3] * (len(sizes) - 1) and 1 <= sizes[-1] <= 3 and sum(sizes) == n_rows
    rows = RowsFile(path)
    assert len(rows) == n_rows
    assert sum(part is not None for part in rows._parts) == 1  # opening reads the last batch only
    assert np.array_equal(np.concatenate([rows[i][0] for i in range(len(rows))]), values)
    assert all(len(rows[i][0]) == 16 for i in range(len(rows) - 1))
    assert np.array_equal(rows[-1][0], rows[len(rows) - 1][0])
    doc_starts = np.concatenate([rows[i][1] + 16 * i for i in range(len(rows))])
    assert np.array_equal(doc_starts, np.concatenate([[0], np.cumsum(lengths)[:-1]]))


def test_rows_per_batch_keeps_batches_near_16m_tokens():
    assert rows_per_batch(2048) == 8192 and rows_per_batch(1 << 30) == 1


def test_a_rows_file_of_another_layout_asks_for_a_rebuild(tmp_path):
    path = tmp_path / "rows.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:  # no rows_per_batch
        lists = [pa.array([[1, 2]], pa.list_(pa.int32())), pa.array([[0]], pa.list_(pa.int32())),
                 pa.array([[]], pa.list_(pa.int32()))]
        writer.write_batch(pa.record_batch(lists, schema=SCHEMA))
    with pytest.raises(ValueError, match="rebuild the cache"):
        RowsFile(path)


def test_cache_rows_reads_every_segment_with_few_files_open(tmp_path):
    from medkor.data.rows import CacheRows

    segments, expected = [], []
    for index in range(7):
        packer = Packer(max_length=8)
        values = np.arange(index * 100, index * 100 + 8 * (index + 2) + 3, dtype=np.int32)
        batches = list(packer.add(values, np.array([len(values)]))) + list(packer.finish())
        path = tmp_path / f"segment-{index}.arrow"
        write_rows(path, batches, rows_per_batch(8))
        take = index + 2  # every full row; the last, short one is left out (a leftover)
        segments.append((path, take))
        expected += [values[i * 8:(i + 1) * 8].tolist() for i in range(take)]
    rows = CacheRows(segments, open_limit=2)
    assert len(rows) == len(expected)
    order = np.random.default_rng(0).permutation(len(rows)).tolist()
    assert [rows[i][0].tolist() for i in order] == [expected[i] for i in order]
    assert len(rows._opened) <= 2  # mapped files stay bounded, whatever the number of segments
    assert rows[-1][0].tolist() == expected[-1] and rows.row_lengths().tolist() == [8] * len(expected)
    with pytest.raises(IndexError):
        rows[len(expected)]
    clone = pickle.loads(pickle.dumps(rows))  # as a DataLoader worker gets it: paths only, mapped again
    assert clone[5][0].tolist() == expected[5] and len(clone._opened) == 1
