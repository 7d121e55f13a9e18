"""The blend of weighted sources and the seeded shuffle of each: plain numpy, memory independent of rows.

`quota_pattern` interleaves sources by integer shares `q` of `Q`: at every step it
takes, among the sources still below their upper quota (`count < w * (n + 1)`), the
one whose lower quota runs out first (smallest `(count + 1) / w`). Every prefix of
length `n` then holds `floor(w * n)` or `ceil(w * n)` rows of each source, strictly
within one row of `w * n` (Megatron's largest-deficit rule can miss by more with
seven or more sources). The rule depends only on the deficits `w * n - count`, which
are back at zero after `Q` steps, so the order is periodic: one period is computed
once (at most `MAX_PERIOD` positions) and any position is found by arithmetic.

`SeededPermutation` is a bijection of `[0, n)` drawn from a key (a Feistel network
on the next even power of two, walked back into range), evaluated on any block of
indices without materialising the permutation.

`MixedStream` puts both together: stream position -> source -> that source's k-th
row, where k counts the source's earlier rows in the stream; pass `k // rows` of a
source is its own permutation, so a source smaller than its share is repeated in
fresh orders and a larger one continues where the last epoch stopped.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import numpy as np

MAX_PERIOD = 1 << 20  # positions of one stored period (5 bytes each); finer weights are rounded to it
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def integer_shares(weights: Sequence[float], period: int | None = None) -> tuple[tuple[int, ...], int]:
    """Weights as integer shares `q` of a total `Q` (their exact ratios when the common denominator
    is at most `MAX_PERIOD`, else largest remainders of `period or MAX_PERIOD`). Zero weights stay zero."""
    if not weights or any((not math.isfinite(w)) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all zero, got {list(weights)}")
    exact = [Fraction(w).limit_denominator(1 << 40) for w in weights]
    total = sum(exact)
    shares = [w / total for w in exact]
    denominator = math.lcm(*(s.denominator for s in shares))
    if denominator <= (period or MAX_PERIOD):
        q = tuple(int(s * denominator) for s in shares)
        return _reduced(q, denominator)
    size = period or MAX_PERIOD
    raw = [s * size for s in shares]
    q = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda j: (-(raw[j] - q[j]), j))
    for j in order[: size - sum(q)]:
        q[j] += 1
    return _reduced(tuple(q), size)


def _reduced(q: tuple[int, ...], total: int) -> tuple[tuple[int, ...], int]:
    g = math.gcd(total, *q)
    return tuple(x // g for x in q), total // g


@lru_cache(maxsize=32)
def quota_pattern(q: tuple[int, ...], total: int) -> tuple[np.ndarray, np.ndarray]:
    """One period of the interleave of shares `q` of `total`: (source of each position, how many
    rows of that source come before it in the period)."""
    if total > MAX_PERIOD or sum(q) != total:
        raise ValueError(f"shares {q} must sum to their total {total} <= {MAX_PERIOD}")
    k = len(q)
    live = [j for j in range(k) if q[j] > 0]
    deficit = [0] * k  # Q * (w * n - count), exact integers
    source = np.empty(total, dtype=np.uint16)
    for n in range(total):
        best = -1
        for j in live:
            if deficit[j] + q[j] > 0 and (best < 0 or (total - deficit[j]) * q[best] < (total - deficit[best]) * q[j]):
                best = j
        for j in live:
            deficit[j] += q[j]
        deficit[best] -= total
        source[n] = best
    if any(deficit):  # the rule guarantees this; a failure here is a bug, not bad input
        raise AssertionError(f"interleave of {q} did not close its period")
    before = np.empty(total, dtype=np.int64)
    for j in live:
        at = np.flatnonzero(source == j)
        before[at] = np.arange(len(at))
    source.setflags(write=False)
    before.setflags(write=False)
    return source, before


class Blend:
    """The periodic interleave of one set of weights, from position 0 of its segment."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.q, self.period = integer_shares(weights)
        self.source, self.before = quota_pattern(self.q, self.period)
        self.per_period = np.asarray(self.q, dtype=np.int64)

    def sources(self, offsets: np.ndarray) -> np.ndarray:
        return self.source[offsets % self.period].astype(np.int64)

    def earlier(self, offsets: np.ndarray) -> np.ndarray:
        """Rows of each position's own source before it in the segment."""
        source = self.sources(offsets)
        return (offsets // self.period) * self.per_period[source] + self.before[offsets % self.period]

    def counts(self, length: int) -> np.ndarray:
        """Rows of every source in the first `length` positions."""
        full, rest = divmod(int(length), self.period)
        tail = np.bincount(self.source[:rest], minlength=len(self.q))[: len(self.q)]
        return full * self.per_period + tail


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # arrays wrap without a warning
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stream_key(*parts: int) -> int:
    """One 64-bit key from small integers (seed, source, pass, ...)."""
    key = np.uint64(0x9E3779B97F4A7C15)
    for part in parts:
        key = _mix64(np.asarray([key ^ np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF)], dtype=np.uint64))[0]
    return int(key)


class SeededPermutation:
    """A bijection of `[0, n)` given by `key`: four Feistel rounds on `2b` bits (`4 ** b >= n`),
    re-applied to the few values that land outside `[0, n)` (cycle walking)."""

    ROUNDS = 4

    def __init__(self, n: int, key: int) -> None:
        if n < 1:
            raise ValueError(f"a permutation needs at least one element, got {n}")
        self.n = int(n)
        self.half = max(1, math.ceil(math.log2(n) / 2)) if n > 1 else 1
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = [np.uint64(stream_key(key, r)) for r in range(self.ROUNDS)]

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix64(right ^ k) & self.mask)
        return (left << np.uint64(self.half)) | right

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        x = np.asarray(indices, dtype=np.uint64)
        if self.n == 1:
            return np.zeros(len(x), dtype=np.int64)
        x = self._rounds(x)
        out = x >= np.uint64(self.n)
        while out.any():
            x[out] = self._rounds(x[out])
            out = x >= np.uint64(self.n)
        return x.astype(np.int64)


class MixedStream:
    """Stream positions -> row indices of sources laid end to end (source j's rows at `offsets[j]`).

    `segments` are (first stream position, weights), the first at 0: each restarts the blend
    with its weights, and carries on every source's count of rows so far.
    """

    def __init__(self, sizes: Sequence[int], seed: int, segments: Sequence[tuple[int, Sequence[float]]]) -> None:
        if not segments or segments[0][0] != 0:
            raise ValueError("the first weight segment must start at position 0")
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.cumsum([0, *self.sizes])
        self.seed = int(seed)
        self.starts: list[int] = []
        self.blends: list[Blend] = []
        self.bases: list[np.ndarray] = []
        for start, weights in segments:
            if len(weights) != len(self.sizes):
                raise ValueError(f"{len(weights)} weights for {len(self.sizes)} sources")
            blend = Blend(weights)
            for j, share in enumerate(blend.q):
                if share and self.sizes[j] < 1:
                    raise ValueError(f"source {j} has no rows but a weight")
            if self.starts:
                if start < self.starts[-1]:
                    raise ValueError("weight segments must be in order")
                base = self.bases[-1] + self.blends[-1].counts(start - self.starts[-1])
            else:
                base = np.zeros(len(self.sizes), dtype=np.int64)
            if self.starts and start == self.starts[-1]:  # a later change at the same position wins
                self.blends[-1], self.bases[-1] = blend, self.bases[-1]
                continue
            self.starts.append(int(start))
            self.blends.append(blend)
            self.bases.append(base)
        self._perms: dict[tuple[int, int], SeededPermutation] = {}

    def counts(self, position: int) -> np.ndarray:
        """Rows of each source in stream positions `[0, position)`."""
        s = bisect_right(self.starts, position) - 1
        return self.bases[s] + self.blends[s].counts(position - self.starts[s])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, that source's row count before it) of each stream position."""
        positions = np.asarray(positions, dtype=np.int64)
        source = np.empty(len(positions), dtype=np.int64)
        earlier = np.empty(len(positions), dtype=np.int64)
        segment = np.searchsorted(np.asarray(self.starts), positions, side="right") - 1
        for s in np.unique(segment):
            at = segment == s
            offsets = positions[at] - self.starts[s]
            blend = self.blends[s]
            src = blend.sources(offsets)
            source[at] = src
            earlier[at] = self.bases[s][src] + blend.earlier(offsets)
        return source, earlier

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The row (index into the concatenated sources) at each stream position."""
        source, earlier = self.locate(positions)
        sizes = np.asarray(self.sizes, dtype=np.int64)
        passes, within = np.divmod(earlier, sizes[source])
        rows = np.empty(len(source), dtype=np.int64)
        groups = passes * len(sizes) + source  # one permutation per (source, pass) met in the block
        for group in np.unique(groups).tolist():
            at = groups == group
            p, j = divmod(group, len(sizes))
            rows[at] = self.offsets[j] + self.permutation(j, p)(within[at])
        return rows

    def permutation(self, source: int, pass_: int) -> SeededPermutation:
        key = (source, pass_)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            self._perms[key] = SeededPermutation(self.sizes[source], stream_key(self.seed, source, pass_))
        return self._perms[key]
