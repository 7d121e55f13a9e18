"""The training DataLoader that remembers where it is inside an epoch.

Lightning stores `state_dict()` of a training loader in every checkpoint and hands it
back to `load_state_dict()` before the first batch of a resumed run. Without it a
run resumed mid-epoch starts the epoch's data from the beginning again. Lightning
fetches no batch ahead from a loader of known length, so the batches this loader has
yielded in the epoch are exactly the batches that have trained.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from torch.utils.data import DataLoader

from medkor.data.sampler import EpochShuffleSampler


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochShuffleSampler` whose state is (epoch, batches done)."""

    def __init__(self, dataset: Any, *, sampler: EpochShuffleSampler, batch_size: int, **kwargs: Any) -> None:
        if not isinstance(sampler, EpochShuffleSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochShuffleSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, drop_last=False, **kwargs)
        self._batches_done = 0
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, batches done) from a checkpoint

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing below runs until the first batch is asked for, which
        # Lightning does only after `set_epoch`, so the resumed position is applied to
        # the epoch it belongs to (or dropped once training has moved past that epoch).
        if self._resume_at is not None:
            epoch, done = self._resume_at
            self._resume_at = None
            if self.sampler.epoch == epoch:
                self.sampler.start = done * self.batch_size
        self._batches_done = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.sampler.epoch,
            "batches_done": self._batches_done,
            "batch_size": self.batch_size,
            "num_rows": self.sampler.num_rows,
            "num_replicas": self.sampler.num_replicas,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"batch_size": self.batch_size, "num_rows": self.sampler.num_rows,
                "num_replicas": self.sampler.num_replicas}
        theirs = {key: state.get(key) for key in mine}
        if theirs != mine:
            changed = ", ".join(f"{k} {theirs[k]} -> {mine[k]}" for k in mine if theirs[k] != mine[k])
            raise ValueError(
                f"the checkpoint's position in the training data does not fit this run ({changed}): "
                "resume with the same data, data.batch_size and number of devices, or start from an "
                "end-of-epoch checkpoint of a run with these settings"
            )
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))
