"""A shuffle that depends only on (seed, epoch), so a resumed run sees the same order."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Random order of `num_rows` indices, drawn from `seed + epoch`.

    A generator seeded once when the DataLoader is built would restart at epoch 0's
    order after a resume; Lightning calls `set_epoch` before every epoch (also the
    first one after a resume), so the order here is a pure function of the epoch.
    """

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_rows
