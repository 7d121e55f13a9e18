"""Replay: mix rows of an earlier stage's data into the training order, deterministically.

Each training position of an epoch (this rank's share of it) is a replay row when
replay is on at that position and a seeded uniform draw for the position is below
`ratio`; otherwise it is the next row of the epoch's shuffled training order.
Replay rows come from their own seeded shuffle, cycled. An epoch keeps its length
(the training rows' count), so the schedule knows its steps: replay takes a share
of the positions, and the training rows it displaces come first in another epoch's
order.

Replay is on for a whole run (`fixed`) or switched by a watched metric (`metric`,
see `medkor.callbacks.forgetting.ForgettingGuard`). A switch takes effect from the
next position the sampler draws and is recorded as (epoch, position, on); the
record is in every checkpoint (the datamodule's state), so a resumed run draws
exactly what the uninterrupted run drew, wherever its switches fell.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from medkor.data.sampler import EpochShuffleSampler

REPLAY_SALT = 7_919  # separates the replay shuffle and the draws from the training shuffle
DRAW_SALT = 104_729


@dataclass
class ReplayMix:
    """Whether replay is on, and every switch so far.

    Attributes:
        ratio: share of positions that are replay rows while replay is on.
        initially_on: replay on from the first position (`fixed` mode) or off until switched.
        switches: (epoch, position, on), in order; position counts this rank's draws in the epoch.
        epoch: epoch of the sampler's latest draw.
        drawn: positions drawn so far in that epoch (the next draw's position).
    """

    ratio: float
    initially_on: bool = True
    switches: list[tuple[int, int, bool]] = field(default_factory=list)
    epoch: int = 0
    drawn: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"replay ratio must be in (0, 1), got {self.ratio}")
        self._keys = [(e, p) for e, p, _ in self.switches]

    def on_at(self, epoch: int, position: int) -> bool:
        """Whether replay is on at a position (the latest switch at or before it decides)."""
        at = bisect_right(self._keys, (epoch, position))
        return self.switches[at - 1][2] if at else self.initially_on

    @property
    def on(self) -> bool:
        """Whether the next draw is under replay."""
        return self.on_at(self.epoch, self.drawn)

    def switch(self, on: bool) -> bool:
        """Turn replay on or off from the next draw; False if it already was."""
        if on == self.on:
            return False
        self.switches.append((self.epoch, self.drawn, on))
        self._keys.append((self.epoch, self.drawn))
        return True

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
        self.switches = [(int(e), int(p), bool(o)) for e, p, o in state["switches"]]
        self._keys = [(e, p) for e, p, _ in self.switches]
        self.epoch, self.drawn = int(state["epoch"]), int(state["drawn"])


class MixtureSampler(EpochShuffleSampler):
    """`EpochShuffleSampler` over the training rows `[0, num_rows)`, with replay rows
    `[num_rows, num_rows + num_replay)` mixed in by `mix` (drawn lazily, position by position)."""

    def __init__(self, num_rows: int, num_replay: int, seed: int, mix: ReplayMix,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if num_replay < 1:
            raise ValueError("replay needs at least one replay row")
        super().__init__(num_rows, seed, num_replicas=num_replicas, rank=rank)
        self.num_replay = num_replay
        self.mix = mix

    def replay_order(self) -> list[int]:
        """This rank's replay rows of the epoch (offset by `num_rows`), shuffled by seed and epoch."""
        generator = torch.Generator().manual_seed(self.seed * REPLAY_SALT + self.epoch)
        order = torch.randperm(self.num_replay, generator=generator).tolist()
        mine = order[self.rank :: self.num_replicas] or order
        return [self.num_rows + i for i in mine]

    def draws(self) -> np.ndarray:
        """This rank's uniform draw for every position of the epoch."""
        generator = torch.Generator().manual_seed((self.seed * DRAW_SALT + self.epoch) * 65_537 + self.rank)
        return torch.rand(self.num_samples, generator=generator, dtype=torch.float64).numpy()

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return self._positions(start)

    def _positions(self, start: int) -> Iterator[int]:
        train, replay, draws = self.indices(), self.replay_order(), self.draws()
        mix, epoch = self.mix, self.epoch
        mix.epoch, mix.drawn = epoch, start
        taken_train = taken_replay = 0
        for position in range(self.num_samples):  # positions before `start` only count (a resumed epoch)
            if mix.on_at(epoch, position) and draws[position] < mix.ratio:
                index = replay[taken_replay % len(replay)]
                taken_replay += 1
            else:
                index = train[taken_train]
                taken_train += 1
            if position >= start:
                mix.epoch, mix.drawn = epoch, position + 1  # drawn before it is handed out: a switch from now on
                yield index


class ConcatRows:
    """Training rows followed by replay rows, as one indexable dataset."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, index: int) -> Any:
        part = int(np.searchsorted(self.bounds, index, side="right")) - 1
        if not 0 <= part < len(self.parts):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self.parts[part][index - int(self.bounds[part])]


def hysteresis(on: bool, value: float, start_above: float, stop_below: float) -> bool:
    """Replay after a reading of the watched loss: on above `start_above`, off below `stop_below`,
    else as it was (a non-finite reading changes nothing)."""
    if not np.isfinite(value):
        return on
    if not on and value > start_above:
        return True
    if on and value < stop_below:
        return False
    return on
