"""One global order cut into rank slices: the same rows in the same global steps on any number of ranks,
and a loader state that continues at the same global position on another number of ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkor.data.loader import GlobalBatchMismatch, ResumableDataLoader
from medkor.data.mixture import MixtureSampler, Mixture
from medkor.data.sampler import EpochShuffleSampler


def _steps(make, world: int, batch: int, accumulate: int, epoch: int = 1) -> list[list[int]]:
    """The rows of every global step, all ranks together, in rank order."""
    per_rank = []
    for rank in range(world):
        sampler = make(world, rank, batch, accumulate)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler))
    share = batch * accumulate
    steps = len(per_rank[0]) // share
    return [[row for rank in range(world) for row in per_rank[rank][s * share:(s + 1) * share]] for s in range(steps)]


def _plain(world, rank, batch, accumulate):
    return EpochShuffleSampler(101, seed=5, num_replicas=world, rank=rank, batch_size=batch, accumulate=accumulate)


def _mixed(world, rank, batch, accumulate):
    mix = Mixture(["a", "b", "c"], [0.6, 0.3, 0.1])
    return MixtureSampler([70, 20, 3], 5, mix, num_replicas=world, rank=rank, batch_size=batch, accumulate=accumulate)


@pytest.mark.parametrize("make", [_plain, _mixed])
def test_the_global_order_does_not_depend_on_ranks_or_accumulation(make):
    reference = _steps(make, 1, 12, 1)
    for world, batch, accumulate in [(2, 6, 1), (3, 4, 1), (4, 3, 1), (2, 3, 2), (1, 4, 3), (4, 1, 3)]:
        assert _steps(make, world, batch, accumulate) == reference, (world, batch, accumulate)
    assert _steps(make, 1, 12, 1, epoch=2) != reference  # reshuffled each epoch


def test_an_epoch_is_padded_to_whole_global_batches_by_wrapping():
    sampler = EpochShuffleSampler(101, seed=5, batch_size=12)
    sampler.set_epoch(0)
    order = list(sampler)
    assert len(order) == len(sampler) == 108 and sorted(order[:101]) == list(range(101))
    assert order[101:] == order[:7]


def _loader(world, rank, batch, accumulate=1):
    sampler = EpochShuffleSampler(60, seed=9, num_replicas=world, rank=rank, batch_size=batch, accumulate=accumulate)
    return ResumableDataLoader(list(range(60)), sampler=sampler, batch_size=batch)


def _run(loaders, epoch, steps, state=None):
    """`steps` global steps of every rank's loader (after `state`); the rows of each step and the states."""
    iterators = []
    for loader in loaders:
        loader.sampler.set_epoch(epoch)
        if state is not None:
            loader.load_state_dict(state)
        iterators.append(iter(loader))
    rows = []
    for _ in range(steps):
        step = []
        for loader, iterator in zip(loaders, iterators):
            for _ in range(loader.sampler.accumulate):
                step += next(iterator).tolist()
        rows.append(step)
    return rows, [loader.state_dict() for loader in loaders]


@pytest.mark.parametrize("before, after", [((2, 6), (1, 12)), ((1, 12), (2, 6)), ((4, 3), (3, 4)), ((2, 3, 2), (1, 6, 2))])
def test_a_state_saved_on_n_ranks_continues_on_m_at_the_same_global_position(before, after):
    uninterrupted, _ = _run([_loader(after[0], r, *after[1:]) for r in range(after[0])], 1, 5)
    first, states = _run([_loader(before[0], r, *before[1:]) for r in range(before[0])], 1, 2)
    assert states[0]["position"] == 24 and all(s == states[0] for s in states)
    rest, _ = _run([_loader(after[0], r, *after[1:]) for r in range(after[0])], 1, 3, state=states[0])
    assert [sorted(s) for s in first + rest] == [sorted(s) for s in uninterrupted]
    assert sorted(x for s in first + rest for x in s) == sorted(set(x for s in first + rest for x in s))  # none twice


def test_another_global_batch_is_refused_naming_what_to_set():
    _, states = _run([_loader(2, r, 6) for r in range(2)], 0, 1)
    with pytest.raises(GlobalBatchMismatch, match=r"global batches of 12 .* this run 8 .*set data.batch_size 12 "):
        _loader(1, 0, 8).load_state_dict(states[0])
    with pytest.raises(GlobalBatchMismatch, match="set data.batch_size 3 "):
        _loader(4, 0, 2).load_state_dict(states[0])
    # the same global batch with another accumulation: the loop's micro-batch count would not fit
    with pytest.raises(GlobalBatchMismatch, match=r"accumulated 1 micro batches .* this run 2: keep "
                                                  r"trainer.accumulate_grad_batches 1 with data.batch_size 12 "):
        _loader(1, 0, 6, 2).load_state_dict(states[0])


def test_a_state_from_another_data_is_refused():
    _, states = _run([_loader(1, 0, 6)], 0, 1)
    other = ResumableDataLoader(list(range(50)), sampler=EpochShuffleSampler(50, seed=9, batch_size=6), batch_size=6)
    with pytest.raises(ValueError, match="resume with the same data"):
        other.load_state_dict(states[0])
    old = {"epoch": 0, "batches_done": 3, "batch_size": 6, "num_rows": 60, "num_replicas": 1}
    with pytest.raises(ValueError, match="end-of-epoch checkpoint"):
        _loader(1, 0, 6).load_state_dict(old)


def test_rows_are_turned_into_tensors_in_batches_of_the_micro_batch():
    loader = _loader(2, 1, 5)
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 6 and all(isinstance(b, torch.Tensor) and len(b) == 5 for b in batches)


def test_a_mixture_with_a_weight_change_resumes_on_another_rank_count():
    def loaders(world, batch, mix):
        rows = [(np.full(1 + i % 4, i),) for i in range(93)]  # (ids,) rows of 1-4 tokens
        return [ResumableDataLoader(rows, batch_size=batch, collate_fn=lambda b: torch.tensor([r[0][0] for r in b]),
                                    sampler=MixtureSampler([70, 20, 3], 5, mix, num_replicas=world, rank=r,
                                                           batch_size=batch)) for r in range(world)]

    straight_mix = Mixture(["a", "b", "c"], [0.6, 0.3, 0.1])
    straight = loaders(1, 12, straight_mix)
    for loader in straight:
        loader.sampler.set_epoch(1)
    iterator = iter(straight[0])
    rows = [next(iterator).tolist()]
    straight_mix.set_weight("c", 0.0)
    rows += [next(iterator).tolist() for _ in range(4)]

    mix = Mixture(["a", "b", "c"], [0.6, 0.3, 0.1])
    two = loaders(2, 6, mix)
    iterators = []
    for loader in two:
        loader.sampler.set_epoch(1)
        iterators.append(iter(loader))
    first = [next(iterators[0]).tolist() + next(iterators[1]).tolist()]
    mix.set_weight("c", 0.0)
    first += [next(iterators[0]).tolist() + next(iterators[1]).tolist()]
    state, mix_state = two[0].state_dict(), mix.state_dict()
    assert state["position"] == 24 and state["seen"]["c"][0] == sum(1 for s in first for x in s if x >= 90)

    resumed_mix = Mixture(["a", "b", "c"], [0.6, 0.3, 0.1])
    resumed_mix.load_state_dict(mix_state)
    one = loaders(1, 12, resumed_mix)[0]
    rest, _ = _run([one], 1, 3, state)
    assert [sorted(s) for s in first + rest] == [sorted(s) for s in rows]
    assert all(x < 90 for s in rows[1:] for x in s)  # no row of c after the change
    seen = one.seen()
    assert sum(r for r, _ in seen.values()) == 5 * 12
    assert sum(t for _, t in seen.values()) == sum(1 + x % 4 for s in rows for x in s)  # tokens: each row's length
