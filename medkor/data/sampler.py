"""A shuffle that depends only on (seed, epoch), sharded over ranks, resumable inside an epoch."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DistributedSampler


class _Count:
    """A sized stand-in for the dataset: the sampler needs only its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class EpochShuffleSampler(DistributedSampler):
    """Random order of `num_rows` indices drawn from `seed + epoch`, this rank's share of it.

    A generator seeded once when the DataLoader is built would restart at epoch 0's
    order after a resume; Lightning calls `set_epoch` before every epoch, so the order
    is a pure function of the epoch. Every rank draws the same permutation and takes
    every `num_replicas`-th index from `rank` on (padded by wrapping so ranks get equal
    shares, as `DistributedSampler` does); being a `DistributedSampler`, Lightning
    leaves it in place instead of wrapping it. `start` skips that many of this rank's
    indices in the next pass only: how a resumed run continues inside an epoch.
    """

    def __init__(self, num_rows: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        super().__init__(_Count(num_rows), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.num_rows = num_rows
        self.num_samples = math.ceil(num_rows / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.start = 0

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, from the first one."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_rows, generator=generator).tolist()
        if self.total_size > len(order):  # pad by wrapping so every rank has num_samples
            order += (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size - len(order)]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.indices()[start:])

    def __len__(self) -> int:
        return self.num_samples
