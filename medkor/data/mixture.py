"""Weighted sources in one training order, and weight changes recorded so a resume mixes exactly.

A `Mixture` names the sources of a stage and their weights. The sampler
(`MixtureSampler`) lays the sources end to end (`ConcatRows`) and draws the global
order from `medkor.data.blend.MixedStream`: in every prefix each source has its
weight's share of the rows to within one row, each source in its own seeded
shuffle, repeated when its share is larger than its rows.

Weights can change during a run (`set_weight`, what `ForgettingGuard` does). A change
applies from the next global batch no rank has drawn yet and is recorded as
(epoch, position, weights); the record is in every checkpoint (the datamodule's
state), so a resumed run, on any number of ranks, draws what the uninterrupted one
drew. `ReplayMix` is the two-source mixture of `data.replay`: the training rows and
an earlier stage's rows at `ratio` while replay is on, none while it is off.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from medkor.data.mix_sources import MixSource, epoch_plan
from medkor.data.sampler import EpochShuffleSampler


@dataclass
class Mixture:
    """Named sources, their weights, and every change of the weights so far.

    Attributes:
        names: One per source, in the order the sources are laid end to end.
        weights: The weights from the first position (normalised when used).
        changes: (epoch, position, weights), in order; position is a global position of the epoch.
        epoch_rows: Positions per epoch; None: the sum of the sources' rows.
        epoch, drawn: The epoch and the position after the latest global batch a sampler drew from.
    """

    names: list[str]
    weights: list[float]
    changes: list[tuple[int, int, tuple[float, ...]]] = field(default_factory=list)
    epoch_rows: Optional[int] = None
    epoch: int = 0
    drawn: int = 0

    def __post_init__(self) -> None:
        if len(self.names) != len(self.weights) or len(set(self.names)) != len(self.names):
            raise ValueError(f"mixture needs one weight per distinct name, got {self.names} and {self.weights}")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"mixture weights must be >= 0 and not all zero, got {self.weights}")
        self.weights = [float(w) for w in self.weights]

    def weights_at(self, epoch: int, position: int) -> tuple[float, ...]:
        """The weights in force at a position (the latest change at or before it decides)."""
        at = bisect_right([(e, p) for e, p, _ in self.changes], (epoch, position))
        return self.changes[at - 1][2] if at else tuple(self.weights)

    @property
    def current(self) -> tuple[float, ...]:
        """The weights of the next global batch."""
        return self.weights_at(self.epoch, self.drawn)

    def shares(self, weights: Optional[Sequence[float]] = None) -> dict[str, float]:
        """Each source's share of the rows under `weights` (default: the current ones)."""
        values = self.current if weights is None else weights
        total = sum(values)
        return {name: w / total for name, w in zip(self.names, values)}

    def set_weights(self, weights: Sequence[float]) -> bool:
        """New weights from the next global batch; False if they are the current ones."""
        weights = tuple(float(w) for w in weights)
        if len(weights) != len(self.names) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"{len(self.names)} weights >= 0, not all zero, are needed; got {list(weights)}")
        if weights == self.current:
            return False
        self.changes.append((self.epoch, self.drawn, weights))
        return True

    def set_weight(self, name: str, weight: float) -> bool:
        """Change one source's weight from the next global batch (the others keep theirs)."""
        if name not in self.names:
            raise ValueError(f"no source {name!r} in the mixture; sources: {', '.join(self.names)}")
        weights = list(self.current)
        weights[self.names.index(name)] = weight
        return self.set_weights(weights)

    def set_share(self, name: str, share: float) -> bool:
        """Give one source `share` of the rows from the next global batch; the others keep their proportions."""
        if name not in self.names:
            raise ValueError(f"no source {name!r} in the mixture; sources: {', '.join(self.names)}")
        if not 0.0 <= share < 1.0:
            raise ValueError(f"a share must be in [0, 1), got {share}")
        weights = list(self.current)
        j = self.names.index(name)
        total, others = sum(weights), sum(weights) - weights[j]
        if others <= 0:
            raise ValueError(f"source {name!r} is the only one with rows; another source needs a weight")
        new = [w * (1.0 - share) * total / others for w in weights]
        new[j] = share * total
        return self.set_weights(new)

    def rows_per_epoch(self, sizes: Sequence[int]) -> int:
        return self.epoch_rows if self.epoch_rows is not None else int(sum(sizes))

    def segments(self, epoch_rows: int) -> list[tuple[int, tuple[float, ...]]]:
        """(first stream position, weights) of the stream: a change inside the padding of an epoch
        applies from the next epoch's first position."""
        segments = [(0, tuple(self.weights))]
        for epoch, position, weights in self.changes:
            segments.append((epoch * epoch_rows + min(position, epoch_rows), weights))
        return segments

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "weights": list(self.weights),
                "changes": [[e, p, list(w)] for e, p, w in self.changes], "epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("names") != self.names:
            raise ValueError(f"the checkpoint's data sources ({', '.join(state.get('names') or [])}) are not this "
                             f"run's ({', '.join(self.names)}): resume with the same data sources, or start a new run")
        self.changes = [(int(e), int(p), tuple(float(x) for x in w)) for e, p, w in state["changes"]]
        self.epoch, self.drawn = int(state["epoch"]), int(state["drawn"])


class ReplayMix(Mixture):
    """`data.replay`: the training rows and replay rows at `ratio` while on, training rows only while off.

    An epoch keeps the training rows' count of positions, so the schedule knows its
    steps; the training rows replay displaces come first in the next epoch.
    """

    def __init__(self, ratio: float, initially_on: bool = True,
                 switches: Sequence[tuple[int, int, bool]] = (), epoch: int = 0, drawn: int = 0) -> None:
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"replay ratio must be in (0, 1), got {ratio}")
        self.ratio = float(ratio)
        self.initially_on = initially_on
        super().__init__(["train", "replay"], list(self._weights(initially_on)),
                         [(e, p, self._weights(on)) for e, p, on in switches], None, epoch, drawn)

    def _weights(self, on: bool) -> tuple[float, ...]:
        return (1.0 - self.ratio, self.ratio) if on else (1.0, 0.0)

    def rows_per_epoch(self, sizes: Sequence[int]) -> int:
        return int(sizes[0])

    def on_at(self, epoch: int, position: int) -> bool:
        return self.weights_at(epoch, position)[1] > 0

    @property
    def on(self) -> bool:
        """Whether the next global batch is under replay."""
        return self.current[1] > 0

    @property
    def switches(self) -> list[tuple[int, int, bool]]:
        return [(e, p, w[1] > 0) for e, p, w in self.changes]

    def switch(self, on: bool) -> bool:
        """Turn replay on or off from the next global batch; False if it already was."""
        return self.set_weights(self._weights(on))

    def state_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "initially_on": self.initially_on,
                "switches": [list(s) for s in self.switches], "epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (self.ratio, self.initially_on)
        theirs = (state.get("ratio"), state.get("initially_on"))
        if mine != theirs:
            raise ValueError(
                f"the checkpoint's replay (ratio {theirs[0]}, on from the start: {theirs[1]}) is not this run's "
                f"(ratio {mine[0]}, {mine[1]}): resume with the same data.replay, or start a new run"
            )
        self.changes = [(int(e), int(p), self._weights(bool(o))) for e, p, o in state["switches"]]
        self.epoch, self.drawn = int(state["epoch"]), int(state["drawn"])


class MixtureSampler(EpochShuffleSampler):
    """`EpochShuffleSampler` over sources laid end to end (`sizes`), blended by `mix`.

    `mix` is shared with whoever changes its weights; a change applies from the next global batch.
    """

    def __init__(self, sizes: Sequence[int], seed: int, mix: Mixture, num_replicas: int = 1, rank: int = 0,
                 batch_size: int = 1, accumulate: int = 1) -> None:
        if len(sizes) != len(mix.names):
            raise ValueError(f"{len(sizes)} sources for a mixture of {len(mix.names)}")
        for name, size, weight in zip(mix.names, sizes, mix.weights):
            if size < 1 and weight > 0:
                raise ValueError(f"source {name!r} has no rows")
        self._sizes = [int(n) for n in sizes]
        self.mix = mix
        super().__init__(int(sum(sizes)), seed, num_replicas=num_replicas, rank=rank, batch_size=batch_size,
                         accumulate=accumulate)

    @property
    def sizes(self) -> list[int]:
        return self._sizes

    @property
    def epoch_rows(self) -> int:
        return self.mix.rows_per_epoch(self._sizes)

    def segments(self) -> list[tuple[int, tuple[float, ...]]]:
        return self.mix.segments(self.epoch_rows)

    def on_draw(self, epoch: int, drawn: int) -> None:
        self.mix.epoch, self.mix.drawn = epoch, drawn

    def source_counts(self, position: int, epoch: Optional[int] = None) -> np.ndarray:
        """Rows of each source in this epoch's positions `[0, position)` (padding included)."""
        epoch = self.epoch if epoch is None else epoch
        rows = self.epoch_rows
        stream = self.stream()
        start = stream.counts(epoch * rows)
        full, rest = divmod(int(position), rows)
        return full * (stream.counts((epoch + 1) * rows) - start) + stream.counts(epoch * rows + rest) - start


class ConcatRows:
    """Sources' rows laid end to end, as one indexable dataset."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, index: int) -> Any:
        part = int(np.searchsorted(self.bounds, index, side="right")) - 1
        if not 0 <= part < len(self.parts) or index < 0:
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self.parts[part][index - int(self.bounds[part])]


def hysteresis(on: bool, value: float, start_above: float, stop_below: float) -> bool:
    """Raised or not after a reading of the watched loss: raised above `start_above`, lowered below
    `stop_below`, else as it was (a non-finite reading changes nothing)."""
    if not np.isfinite(value):
        return on
    if not on and value > start_above:
        return True
    if on and value < stop_below:
        return False
    return on


def training_order(parts: Sequence[Any], seed: int, mix: Optional[Mixture], num_replicas: int = 1, rank: int = 0,
                   batch_size: int = 1, accumulate: int = 1) -> tuple[Any, EpochShuffleSampler]:
    """The training dataset and this rank's sampler: one source shuffled, or several blended by `mix`."""
    if mix is None or len(parts) == 1:
        return parts[0], EpochShuffleSampler(len(parts[0]), seed, num_replicas=num_replicas, rank=rank,
                                             batch_size=batch_size, accumulate=accumulate)
    sampler = MixtureSampler([len(p) for p in parts], seed, mix, num_replicas=num_replicas, rank=rank,
                             batch_size=batch_size, accumulate=accumulate)
    return ConcatRows(parts), sampler


def build_mixture(sources: Sequence[MixSource], rows: Sequence[int], tokens: Sequence[int]) -> tuple[Mixture, list[str]]:
    """The `Mixture` of `data.sources` and the lines that describe each source's share."""
    epoch_rows, weights, lines = epoch_plan(sources, rows, tokens)
    return Mixture([s.name for s in sources], weights, epoch_rows=epoch_rows), lines
