"""Sharding questions over ranks, syncing counts with torchmetrics, gathering predictions.

Every rank builds the same question list, sorts it by prompt length and takes every
``world_size``-th item starting at its rank: ranks get similar amounts of work and together see
each question exactly once. Counts are summed with torchmetrics (exact integers, so the accuracy
equals one process's); predictions are gathered as Python objects and merged on rank 0.
Without an initialised process group all of this reduces to the single-process case.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torchmetrics.aggregation import SumMetric

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int, lengths: Sequence[int] | None = None) -> list[T]:
    """This rank's share: every ``world_size``-th item of the length-sorted order, from ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    order = list(range(len(items)))
    if lengths is not None:
        order.sort(key=lambda i: (-lengths[i], i))
    return [items[i] for i in order[rank::world_size]]


def distributed_ready() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sync_counts(counts: Mapping[str, tuple[int, int]], device: torch.device | str = "cpu") -> dict[str, tuple[int, int]]:
    """``subset -> (correct, total)`` summed over all ranks (every rank must call this, same subsets)."""
    out: dict[str, tuple[int, int]] = {}
    for subset in sorted(counts):  # same order on every rank: each compute() is a collective
        correct, total = SumMetric().to(device), SumMetric().to(device)
        correct.update(torch.tensor(float(counts[subset][0]), device=device))
        total.update(torch.tensor(float(counts[subset][1]), device=device))
        out[subset] = (int(round(correct.compute().item())), int(round(total.compute().item())))
    return {subset: out[subset] for subset in counts}


def gather_objects(local: list[Any]) -> list[Any]:
    """All ranks' lists concatenated (rank order); the local list when not distributed."""
    if not distributed_ready():
        return list(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def max_over_ranks(value: float, device: torch.device | str = "cpu") -> float:
    """The largest value any rank holds (the wall time of the slowest rank)."""
    if not distributed_ready():
        return value
    tensor = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())
