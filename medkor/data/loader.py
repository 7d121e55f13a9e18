"""The training DataLoader whose checkpoint state is the global position in the epoch's order.

Lightning stores `state_dict()` of a training loader in every checkpoint and hands it
back to `load_state_dict()` before the first batch of a resumed run. The state is the
epoch and the rows of the global order consumed in it (whole global batches), not
this rank's count of batches: a run checkpointed on N ranks continues on M ranks at
the same global position, provided the global batch (`data.batch_size x devices x
accumulation`) is the same. Lightning fetches no batch ahead from a loader of known
length, so the batches this loader has yielded are exactly the batches that trained.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
from torch.utils.data import DataLoader

from medkor.data.sampler import EpochShuffleSampler


class GlobalBatchMismatch(ValueError):
    """A checkpoint's global batch is not this run's: its position cannot be continued."""


def describe_global_batch(batch_size: int, devices: int, accumulate: int) -> str:
    return f"{batch_size * devices * accumulate} (data.batch_size {batch_size} x {devices} devices x {accumulate} accumulated)"


def fitting_settings(global_batch: int, devices: int, accumulate: int) -> str:
    """What to set on `devices` ranks for a global batch of `global_batch` rows."""
    if global_batch % (devices * accumulate) == 0:
        return f"data.batch_size {global_batch // (devices * accumulate)}"
    if global_batch % devices == 0:
        return f"data.batch_size x trainer.accumulate_grad_batches = {global_batch // devices}"
    return f"a number of devices that divides {global_batch}, and data.batch_size to match"


def global_batch_refusal(state: dict[str, Any], batch_size: int, devices: int, accumulate: int) -> Optional[str]:
    """Why a loader state cannot continue with these settings (another global batch), or None."""
    theirs_batch, theirs_devices = int(state.get("batch_size", batch_size)), int(state.get("num_replicas", devices))
    theirs_accumulate = int(state.get("accumulate", 1))
    theirs = int(state.get("global_batch", theirs_batch * theirs_devices * theirs_accumulate))
    if theirs == batch_size * devices * accumulate and theirs_accumulate == accumulate:
        return None
    if theirs == batch_size * devices * accumulate:
        # Lightning's loop counts micro batches: another accumulation would end the epoch elsewhere
        fits = theirs % (devices * theirs_accumulate) == 0
        return (f"the checkpoint accumulated {theirs_accumulate} micro batches per optimizer step, this run "
                f"{accumulate}: keep trainer.accumulate_grad_batches {theirs_accumulate}"
                + (f" with data.batch_size {theirs // (devices * theirs_accumulate)}" if fits else "")
                + f" (the global batch stays {theirs}), or start a new run")
    return (f"the checkpoint trained global batches of "
            f"{describe_global_batch(theirs_batch, theirs_devices, theirs_accumulate)}, this run "
            f"{describe_global_batch(batch_size, devices, accumulate)}: set "
            f"{fitting_settings(theirs, devices, accumulate)} to continue at the same position, or start a new run")


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochShuffleSampler` whose state is (epoch, global position)."""

    def __init__(self, dataset: Any, *, sampler: EpochShuffleSampler, batch_size: int, **kwargs: Any) -> None:
        if not isinstance(sampler, EpochShuffleSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochShuffleSampler, got {type(sampler).__name__}")
        if sampler.batch_size != batch_size:
            raise ValueError(f"the sampler cuts micro batches of {sampler.batch_size} rows, the loader {batch_size}")
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, drop_last=False, **kwargs)
        self._batches_done = 0
        self._resume_at: Optional[tuple[int, int]] = None  # (epoch, global position) from a checkpoint
        names = getattr(getattr(sampler, "mix", None), "names", None)
        self.source_names: list[str] = list(names) if names else []
        # rows and tokens of each source trained so far in the run (every rank's, so equal on all ranks)
        self.seen_rows = np.zeros(len(self.source_names), dtype=np.int64)
        self.seen_tokens = np.zeros(len(self.source_names), dtype=np.int64)

    @property
    def position(self) -> int:
        """Rows of the epoch's global order consumed by whole global batches trained so far."""
        sampler = self.sampler
        return self._batches_done // sampler.accumulate * sampler.global_batch

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing below runs until the first batch is asked for, which
        # Lightning does only after `set_epoch`, so the resumed position is applied to
        # the epoch it belongs to (or dropped once training has moved past that epoch).
        sampler = self.sampler
        if self._resume_at is not None:
            epoch, position = self._resume_at
            self._resume_at = None
            if sampler.epoch == epoch:
                sampler.start = position
        self._batches_done = sampler.start // sampler.global_batch * sampler.accumulate
        for batch in super().__iter__():
            self._batches_done += 1
            if self.source_names and self._batches_done % sampler.accumulate == 0:
                self._count(self._batches_done // sampler.accumulate - 1)
            yield batch

    def _count(self, step: int) -> None:
        """Add global step `step`'s rows and tokens to each source's count (host work, no device)."""
        rows = self.sampler.global_rows(step)
        source = np.searchsorted(self.sampler.stream().offsets, rows, side="right") - 1
        lengths = np.fromiter((len(self.dataset[i][0]) for i in rows.tolist()), dtype=np.int64, count=len(rows))
        self.seen_rows += np.bincount(source, minlength=len(self.source_names))
        self.seen_tokens += np.bincount(source, weights=lengths, minlength=len(self.source_names)).astype(np.int64)

    def seen(self) -> dict[str, tuple[int, int]]:
        """(rows, tokens) of each source trained so far, by name."""
        return {name: (int(r), int(t)) for name, r, t in zip(self.source_names, self.seen_rows, self.seen_tokens)}

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        return {
            "epoch": sampler.epoch,
            "position": self.position,
            "global_batch": sampler.global_batch,
            "batch_size": sampler.batch_size,
            "num_replicas": sampler.num_replicas,
            "accumulate": sampler.accumulate,
            "epoch_rows": sampler.epoch_rows,
            "sizes": list(sampler.sizes),
            "seen": {name: list(counts) for name, counts in self.seen().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.sampler
        if "position" not in state:  # written before the order was global: only an epoch boundary carries over
            if int(state.get("batches_done", 0)) != 0:
                raise ValueError(
                    "the checkpoint stopped inside an epoch of a data order this medkor no longer draws: resume "
                    "from an end-of-epoch checkpoint, or start a new run")
            self._resume_at = (int(state["epoch"]), 0)
            return
        refusal = global_batch_refusal(state, sampler.batch_size, sampler.num_replicas, sampler.accumulate)
        if refusal:
            raise GlobalBatchMismatch(refusal)
        if list(state["sizes"]) != list(sampler.sizes) or int(state["epoch_rows"]) != sampler.epoch_rows:
            raise ValueError(
                f"the checkpoint's training data ({state['sizes']} rows per source, {state['epoch_rows']} per epoch) "
                f"is not this run's ({sampler.sizes}, {sampler.epoch_rows}): resume with the same data, or start "
                "a new run")
        self._resume_at = (int(state["epoch"]), int(state["position"]))
        seen = state.get("seen") or {}
        for j, name in enumerate(self.source_names):
            self.seen_rows[j], self.seen_tokens[j] = seen.get(name, (0, 0))
