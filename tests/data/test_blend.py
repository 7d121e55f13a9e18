"""The blend: exact shares in every prefix, periodic arithmetic, seeded bijections, repeated small sources."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from medkor.data.blend import Blend, MixedStream, SeededPermutation, integer_shares, quota_pattern


def _assert_within_one_row(q: tuple[int, ...], total: int, length: int) -> None:
    source, before = quota_pattern(q, total)
    counts = [0] * len(q)
    for n in range(length):
        j = int(source[n % total])
        assert before[n % total] == counts[j] % q[j] if q[j] else False
        counts[j] += 1
        for i, share in enumerate(q):  # |count - w (n + 1)| < 1, in exact integers
            assert abs(counts[i] * total - share * (n + 1)) < total, (q, n, i)


def test_every_prefix_holds_each_share_to_within_one_row():
    rng = random.Random(0)
    for _ in range(150):
        k = rng.randint(2, 9)
        total = rng.randint(k, 120)
        cuts = sorted(rng.choices(range(total + 1), k=k - 1))
        q = tuple(b - a for a, b in zip([0, *cuts], [*cuts, total]))
        if 0 in q:
            continue
        _assert_within_one_row(q, total, 2 * total)


def test_seven_sources_where_the_largest_deficit_rule_misses_by_more_than_a_row():
    # Megatron's rule (take the largest w * n - count) is 1.0076 rows off after some prefix here
    q = (7, 10, 79, 9, 103, 54, 2)
    _assert_within_one_row(q, sum(q), sum(q))


def test_three_sources_at_points_of_an_epoch():
    blend = Blend([0.6, 0.3, 0.1])
    assert (blend.q, blend.period) == ((6, 3, 1), 10)
    for n in (1, 7, 10, 333, 10_000, 123_457):
        counts = blend.counts(n)
        assert counts.sum() == n
        assert np.all(np.abs(counts - np.array([0.6, 0.3, 0.1]) * n) < 1), (n, counts)
    assert blend.counts(1000).tolist() == [600, 300, 100]
    offsets = np.arange(0, 5000)
    assert np.bincount(blend.sources(offsets)).tolist() == [3000, 1500, 500]


def test_weights_become_exact_integer_shares_or_are_rounded_to_the_period():
    assert integer_shares([3, 1]) == ((3, 1), 4)
    assert integer_shares([0.5, 0.25, 0.25]) == ((2, 1, 1), 4)
    assert integer_shares([1, 0]) == ((1, 0), 1)
    assert integer_shares([1 / 3, 1 / 7, 0.5]) == ((14, 6, 21), 41)  # exact ratios of the floats
    weights = [1 / 997, 1 / 991, 1.0]  # common denominator far above 1000: rounded to 1000
    q, total = integer_shares(weights, period=1000)
    assert total == 1000 and sum(q) == 1000
    assert all(abs(x - w / sum(weights) * 1000) < 1 for x, w in zip(q, weights))
    with pytest.raises(ValueError, match="not all zero"):
        integer_shares([0, 0])
    with pytest.raises(ValueError, match="finite"):
        integer_shares([1, float("nan")])


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_seeded_permutation_is_a_bijection_evaluated_in_blocks(n):
    perm = SeededPermutation(n, key=11)
    whole = perm(np.arange(n))
    assert sorted(whole.tolist()) == list(range(n))
    assert perm(np.arange(n // 2, n)).tolist() == whole[n // 2:].tolist()
    if n >= 17:
        assert whole.tolist() != SeededPermutation(n, key=12)(np.arange(n)).tolist()
        assert whole.tolist() != list(range(n))


def test_a_source_smaller_than_its_share_is_repeated_in_fresh_orders():
    stream = MixedStream([5, 100], seed=1, segments=[(0, [0.5, 0.5])])
    rows = stream.rows(np.arange(200))
    small = [r for r in rows.tolist() if r < 5]
    assert len(small) == 100
    passes = [small[i:i + 5] for i in range(0, 100, 5)]
    assert all(sorted(p) == list(range(5)) for p in passes)  # every pass: each row once
    assert len({tuple(p) for p in passes}) > 1  # in its own order
    large = [r for r in rows.tolist() if r >= 5]
    assert sorted(large) == list(range(5, 105))


def test_segments_carry_each_source_count_over():
    stream = MixedStream([40, 40], seed=3, segments=[(0, [1, 0]), (10, [0.5, 0.5]), (30, [1, 0])])
    assert stream.counts(10).tolist() == [10, 0]
    assert stream.counts(30).tolist() == [20, 10]
    assert stream.counts(50).tolist() == [40, 10]
    rows = stream.rows(np.arange(50)).tolist()
    assert all(r < 40 for r in rows[:10] + rows[30:])
    assert sorted(r for r in rows if r < 40) == list(range(40))  # one pass of source 0, nothing twice
