"""The rows file: coalesced record batches, rows read back exactly across batch boundaries."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from medkor.data import rows as rows_module
from medkor.data.packing import Packer
from medkor.data.rows import RowsFile, write_rows


def test_rows_round_trip_across_record_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(rows_module, "RECORD_BATCH_TOKENS", 50)  # force several record batches
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=60)
    values = rng.integers(0, 1000, size=int(lengths.sum()), dtype=np.int32)
    packer = Packer(16, packing=True)
    produced = [r for i in range(0, 60, 7) for r in packer.add(values[lengths[:i].sum():lengths[: i + 7].sum()], lengths[i : i + 7])]
    produced += list(packer.finish())
    path = tmp_path / "rows.arrow"
    n_rows, n_tokens = write_rows(path, produced)
    assert n_tokens == len(values)
    with pa.memory_map(str(path)) as source:
        assert pa.ipc.open_file(source).num_record_batches > 1
    rows = RowsFile(path)
    assert len(rows) == n_rows
    assert np.array_equal(np.concatenate([rows[i][0] for i in range(len(rows))]), values)
    assert all(len(rows[i][0]) == 16 for i in range(len(rows) - 1))
    assert np.array_equal(rows[-1][0], rows[len(rows) - 1][0])
