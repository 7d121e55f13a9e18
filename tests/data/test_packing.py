"""Packing keeps every token, cuts exact rows, and records where documents start."""

from __future__ import annotations

import numpy as np
import pytest

from medkor.data.packing import Packer


def _docs(rng, count):
    lengths = rng.integers(1, 40, size=count)
    return [rng.integers(5, 1000, size=n).astype(np.int32) for n in lengths]


def _run(packer, docs, chunk):
    rows = []
    for i in range(0, len(docs), chunk):
        part = docs[i : i + chunk]
        values = np.concatenate(part)
        lengths = np.array([len(d) for d in part])
        for batch in packer.add(values, lengths):
            rows.extend(_split(batch))
    for batch in packer.finish():
        rows.extend(_split(batch))
    return rows


def _split(batch):
    return [
        (
            batch.values[batch.offsets[i] : batch.offsets[i + 1]],
            batch.starts[batch.starts_offsets[i] : batch.starts_offsets[i + 1]],
        )
        for i in range(len(batch))
    ]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_packed_rows_keep_every_token_in_order(chunk):
    rng = np.random.default_rng(0)
    docs = _docs(rng, 200)
    rows = _run(Packer(64, packing=True), docs, chunk)
    stream = np.concatenate(docs)
    assert np.array_equal(np.concatenate([r for r, _ in rows]), stream)  # nothing lost, nothing reordered
    lengths = [len(r) for r, _ in rows]
    assert all(n == 64 for n in lengths[:-1]) and 0 < lengths[-1] <= 64
    assert len(rows) == -(-len(stream) // 64)
    # document starts, mapped back to stream offsets, are exactly the document boundaries
    starts = np.concatenate([s + 64 * i for i, (_, s) in enumerate(rows)])
    assert np.array_equal(starts, np.cumsum([0] + [len(d) for d in docs[:-1]]))


def test_exact_multiple_has_no_partial_row():
    docs = [np.arange(32, dtype=np.int32), np.arange(32, dtype=np.int32)]
    rows = _run(Packer(16, packing=True), docs, 2)
    assert [len(r) for r, _ in rows] == [16, 16, 16, 16]
    assert [list(s) for _, s in rows] == [[0], [], [0], []]


def test_unpacked_splits_long_documents_into_pieces():
    docs = [np.arange(10, dtype=np.int32), np.arange(3, dtype=np.int32), np.arange(8, dtype=np.int32)]
    rows = _run(Packer(4, packing=False), docs, 2)
    assert [len(r) for r, _ in rows] == [4, 4, 2, 3, 4, 4]
    assert np.array_equal(np.concatenate([r for r, _ in rows]), np.concatenate(docs))
    assert all(list(s) == [0] for _, s in rows)


def test_rejects_bad_lengths_and_tiny_max_length():
    with pytest.raises(ValueError, match="add up"):
        list(Packer(8).add(np.arange(5), np.array([2, 2])))
    with pytest.raises(ValueError, match="at least 2"):
        Packer(1)
