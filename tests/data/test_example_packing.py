"""Best-fit decreasing: whole examples, rows within capacity, ignored spans exact."""

from __future__ import annotations

import numpy as np
import pytest

from medkor.data.example_packing import ExamplePacker, best_fit_decreasing, ignored_spans
from medkor.data.packing import learned_tokens


def test_bins_hold_every_example_once_within_capacity_and_near_the_bound():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, size=1000)
    bins = best_fit_decreasing(lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(1000))
    assert max(lengths[b].sum() for b in bins) <= 512
    assert len(bins) <= -(-lengths.sum() // 512) + 1  # 221 rows where 220 is the least possible
    assert best_fit_decreasing(lengths, 512) == bins  # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_decreasing(np.array([3, 9]), 8)


def test_best_fit_takes_the_fullest_row_that_fits():
    # decreasing: 6, 5, 4, 3 into 8: 6 opens a row, 5 opens a row, 4 opens a row,
    # 3 fits only the rows with 3 or 4 free tokens and takes the fuller one (5 + 3)
    assert best_fit_decreasing(np.array([4, 6, 3, 5]), 8) == [[1], [3, 2], [0]]


def test_ignored_spans_are_runs_cut_at_row_ends():
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=bool)
    spans, offsets = ignored_spans(mask, np.array([0, 4, 9]))
    assert spans.tolist() == [0, 2, 3, 4, 0, 2, 4, 5] and offsets.tolist() == [0, 4, 8]


def test_packer_rows_hold_whole_examples_and_their_masks():
    rng = np.random.default_rng(1)
    lengths = rng.integers(2, 30, size=200)
    values = np.arange(int(lengths.sum()), dtype=np.int32)  # token i is i: where it came from is visible
    ignored = rng.random(len(values)) < 0.3
    packer = ExamplePacker(32, window_tokens=1000)
    rows = [r for part in np.array_split(np.arange(200), 7) for r in packer.add(
        values[np.concatenate([np.arange(a, a + n) for a, n in zip(np.cumsum(lengths)[part] - lengths[part], lengths[part])])],
        lengths[part],
        ignored[np.concatenate([np.arange(a, a + n) for a, n in zip(np.cumsum(lengths)[part] - lengths[part], lengths[part])])],
    )] + list(packer.finish())
    starts_of = {int(a): int(n) for a, n in zip(np.cumsum(lengths) - lengths, lengths)}
    seen, learned = [], 0
    for batch in rows:
        learned += learned_tokens(batch)
        for r in range(len(batch)):
            ids = batch.values[batch.offsets[r]:batch.offsets[r + 1]]
            starts = batch.starts[batch.starts_offsets[r]:batch.starts_offsets[r + 1]]
            spans = batch.spans[batch.spans_offsets[r]:batch.spans_offsets[r + 1]]
            assert len(ids) <= 32 and starts[0] == 0
            row_mask = np.zeros(len(ids), bool)
            for a, b in zip(spans[0::2], spans[1::2]):
                row_mask[a:b] = True
            assert np.array_equal(row_mask, ignored[ids])  # every flag travelled with its token
            for a, b in zip(starts, list(starts[1:]) + [len(ids)]):
                first = int(ids[a])
                assert starts_of[first] == b - a and np.array_equal(ids[a:b], np.arange(first, first + b - a))
                seen.append(first)
    assert sorted(seen) == sorted(starts_of)
    assert learned == int((~ignored).sum()) - int((~ignored[np.cumsum(lengths) - lengths]).sum())
