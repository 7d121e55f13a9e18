"""One global training order, a function of the seed, the epoch and the data; each rank takes its slice.

The order of an epoch is `epoch_rows` positions of a `MixedStream` (the blend of the
sources, each in its own seeded shuffle), padded by wrapping to whole global batches
(`global_batch = batch_size x ranks x accumulation`). Global step `s` trains positions
`[s * G, (s + 1) * G)`; rank `r` takes `[s * G + r * b * a, s * G + (r + 1) * b * a)`, in
`a` micro batches of `b` rows. The number of ranks only cuts the same order into
slices, so a run can stop on N ranks and continue on M at the same global position
as long as `G` is the same. Nothing proportional to the rows is held: positions are
turned into rows block by block (one global step at a time) by arithmetic.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import DistributedSampler

from medkor.data.blend import MixedStream

BLOCK_ROWS = 4096  # rows of this rank computed together (a few global steps ahead; nothing per row is kept)


class _Count:
    """A sized stand-in for the dataset: the sampler needs only its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class EpochShuffleSampler(DistributedSampler):
    """This rank's slice of the global order of `num_rows` rows (one source), shuffled by `seed + epoch`.

    Being a `DistributedSampler`, Lightning leaves it in place instead of wrapping it;
    Lightning calls `set_epoch` before every epoch. `start` (a global position, a
    multiple of the global batch) skips that much of the epoch in the next pass only:
    how a resumed run continues inside an epoch, on any number of ranks.

    Args:
        num_rows: Rows of the dataset.
        seed: Seed of every shuffle.
        num_replicas, rank: The ranks sharing the order, and this one.
        batch_size: Rows per micro batch on each rank.
        accumulate: Micro batches per optimizer step.
    """

    def __init__(self, num_rows: int, seed: int, num_replicas: int = 1, rank: int = 0, batch_size: int = 1,
                 accumulate: int = 1) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        if batch_size < 1 or accumulate < 1:
            raise ValueError(f"batch_size and accumulate must be >= 1, got {batch_size} and {accumulate}")
        super().__init__(_Count(max(num_rows, 1)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.start = 0
        self.drawn = 0  # epoch position after the global batch of the latest row handed out
        self._configure(self.epoch_rows)

    # -- what a mixture overrides ------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        """Rows of each source, laid end to end in the dataset."""
        return [self.num_rows]

    @property
    def epoch_rows(self) -> int:
        """Positions of the global order per epoch, before padding."""
        return self.num_rows

    def segments(self) -> list[tuple[int, Sequence[float]]]:
        """(first stream position, weights) of every stretch of the stream."""
        return [(0, [1.0])]

    def on_draw(self, epoch: int, drawn: int) -> None:
        """Called before each row is handed out with the epoch position after its global batch."""

    # -- geometry ----------------------------------------------------------------------------
    def _configure(self, epoch_rows: int) -> None:
        if epoch_rows < 1:
            raise ValueError("the training order has no rows")
        self.global_batch = self.batch_size * self.num_replicas * self.accumulate
        self.steps = math.ceil(epoch_rows / self.global_batch)
        self.total_size = self.steps * self.global_batch
        self.num_samples = self.steps * self.batch_size * self.accumulate

    def stream(self) -> MixedStream:
        """The stream of the current weights (rebuilt only when they change)."""
        key = (tuple(self.sizes), self.seed, tuple((start, tuple(w)) for start, w in self.segments()))
        if getattr(self, "_stream_key", None) != key:
            self._stream, self._stream_key = MixedStream(self.sizes, self.seed, self.segments()), key
        return self._stream

    def stream_positions(self, positions: np.ndarray, epoch: Optional[int] = None) -> np.ndarray:
        """Stream positions of epoch positions (the padding wraps to the epoch's first positions)."""
        rows = self.epoch_rows
        return (self.epoch if epoch is None else epoch) * rows + np.asarray(positions, dtype=np.int64) % rows

    def rank_positions(self, step: int) -> np.ndarray:
        """Epoch positions this rank trains at global step `step`."""
        per_rank = self.batch_size * self.accumulate
        first = step * self.global_batch + self.rank * per_rank
        return np.arange(first, first + per_rank, dtype=np.int64)

    def global_rows(self, step: int, stream: Optional[MixedStream] = None) -> np.ndarray:
        """Every row of global step `step` of the current epoch, in order (all ranks)."""
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch, dtype=np.int64)
        return (stream or self.stream()).rows(self.stream_positions(positions))

    def indices(self) -> list[int]:
        """This rank's rows of the current epoch, from the first one."""
        stream = self.stream()
        return [i for step in range(self.steps) for i in stream.rows(self.stream_positions(self.rank_positions(step))).tolist()]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        if start % self.global_batch:
            raise ValueError(f"start {start} is not a multiple of the global batch {self.global_batch}")
        return self._rows(start // self.global_batch)

    def _rows(self, first_step: int) -> Iterator[int]:
        epoch = self.epoch
        self.drawn = first_step * self.global_batch
        self.on_draw(epoch, self.drawn)
        per_rank = self.batch_size * self.accumulate
        ahead = max(1, BLOCK_ROWS // per_rank)  # global steps turned into rows at once
        block: list[int] = []
        block_from, block_stream = first_step, None
        for step in range(first_step, self.steps):
            stream = self.stream()
            if stream is not block_stream or step >= block_from + len(block) // per_rank:
                # a weight change applies from the next global batch: rows computed ahead under the
                # old weights are computed again
                steps = range(step, min(step + ahead, self.steps))
                positions = np.concatenate([self.rank_positions(s) for s in steps])
                block, block_from, block_stream = stream.rows(self.stream_positions(positions, epoch)).tolist(), step, stream
            self.drawn = (step + 1) * self.global_batch
            first = (step - block_from) * per_rank
            for row in block[first:first + per_rank]:
                self.on_draw(epoch, self.drawn)
                yield row

    def __len__(self) -> int:
        return self.num_samples
