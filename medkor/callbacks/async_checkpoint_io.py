"""`AsyncAtomicCheckpointIO`: checkpoints written in a background thread, still atomic and fsynced.

A 13 GB checkpoint written and fsynced on the training thread stops training for the
whole write. Here the step that saves only gives the checkpoint's tensors host
buffers (`medkor.run.snapshot`; on CUDA the device-to-host copies are queued on the
stream at once) and hands them to one writer thread, which copies CPU tensors while
the next step's forward and backward run, then writes through `AtomicCheckpointIO`
(temporary file, fsync, rename): a kill still leaves the previous file or the new one,
whole. The next optimizer step waits until the copies are taken
(`CheckpointWriteWatch.on_before_optimizer_step`), so the file holds the state at the
save; code that changes weights or optimizer state in place before that must call
`wait_for_snapshots()` first (the watch does so before a batch where a staged
`trainable` enters its next phase, which may clear AdamW moments).

Lightning's own `AsyncCheckpointIO` clones each tensor where it lives, which on a GPU
holds a second copy of the checkpoint in device memory; this one copies to the host.

Guarantees:
- saves are written in order, one at a time; a save waits only when two are already
  pending (one being written, one queued), and reuses the host buffers of the last
  finished write: host memory holds at most three copies of a checkpoint (one when
  saves are further apart than a write takes, the usual case);
- a failed write is raised as `CheckpointSaveError` (one line: file, cause, what to
  do) at the next training batch (`CheckpointWriteWatch`), the next save, or the end
  of the run, and stops the run;
- `load_checkpoint`, `teardown` (end of fit, also after an error or a preemption
  stop) and `CheckpointWriteWatch.on_fit_end` wait until every pending write is on
  disk; removing a checkpoint waits for its own write. Interpreter exit joins the
  writer thread too, so only a killed process can lose the save in flight (the file
  before it stays whole).

Remote paths are saved on the calling thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback

from medkor.callbacks.checkpoint_io import AtomicCheckpointIO, _is_remote
from medkor.run.snapshot import HostSnapshot, Snapshot


class CheckpointSaveError(OSError):
    """A checkpoint written in the background could not be saved; training stops."""


class AsyncAtomicCheckpointIO(AtomicCheckpointIO):
    """`AtomicCheckpointIO` whose saves run in a writer thread from a host copy taken on the calling thread.

    Use as a trainer plugin (`medkor fit` installs it), together with `CheckpointWriteWatch`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._pending: dict[Future, str] = {}
        self._error: Optional[CheckpointSaveError] = None
        self._snapshot = HostSnapshot()
        self._copying: list[Snapshot] = []

    # ---- saving ------------------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        """Copy `checkpoint`'s tensors to host memory now; write them to `path` in the writer thread.

        Raises:
            TypeError: `storage_options` given.
            CheckpointSaveError: an earlier background save failed.
        """
        if storage_options is not None or _is_remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        self.raise_if_failed()
        self._wait_until_fewer_than(2)  # one write running and one queued at most: two host copies
        snapshot = self._snapshot.take(checkpoint, defer_cpu_copies=True)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medkor-checkpoint")
        where = os.fspath(path)
        future = self._executor.submit(self._write, snapshot, where)
        with self._lock:
            self._pending[future] = where
            self._copying.append(snapshot)
        future.add_done_callback(self._forget)

    def _write(self, snapshot: Snapshot, where: str) -> None:
        try:
            snapshot.copy_now()
            AtomicCheckpointIO.save_checkpoint(self, snapshot.checkpoint, where)
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, which stops the run
            with self._lock:
                if self._error is None:
                    self._error = CheckpointSaveError(
                        f"{err} (written in the background; training stopped, the checkpoint before it is whole)")
                    self._error.errno = getattr(err, "errno", None)
                    self._error.__cause__ = err
        finally:
            snapshot.copied.set()  # also after a failed copy: nobody may wait forever
            self._snapshot.release(snapshot.buffers)
            snapshot.checkpoint = None

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.pop(future, None)
            self._copying = [s for s in self._copying if not s.copied.is_set()]

    def wait_for_snapshots(self) -> None:
        """Block until every pending save has copied the tensors it writes (before changing them in place)."""
        with self._lock:
            copying = list(self._copying)
        for snapshot in copying:
            snapshot.copied.wait()

    # ---- waiting and errors --------------------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """Paths whose writes have not finished."""
        with self._lock:
            return list(self._pending.values())

    def _wait_until_fewer_than(self, count: int) -> None:
        while True:
            with self._lock:
                futures = list(self._pending)  # in submission order
            if len(futures) < count:
                return
            futures[0].exception()

    def wait(self, path: Optional[str] = None) -> None:
        """Block until every pending write (or the one of `path`) is finished; errors stay for `raise_if_failed`."""
        with self._lock:
            futures = [f for f, where in self._pending.items() if path is None or where == path]
        for future in futures:
            future.exception()  # waits; _write never raises

    def raise_if_failed(self) -> None:
        """Raise the error of a failed background save once (`CheckpointSaveError`)."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    # ---- the rest of CheckpointIO ---------------------------------------------------------------------------------
    def load_checkpoint(self, path: _PATH, map_location: Optional[Any] = "cpu",
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        """Wait for pending writes, then load as `AtomicCheckpointIO` does."""
        self.wait()
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Remove `path` once its own pending write (if any) is finished."""
        self.wait(os.fspath(path))
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        """Finish every pending write, stop the writer thread, and raise a failure not raised yet."""
        self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.raise_if_failed()


def _phase_switches_at(pl_module: pl.LightningModule, step: int) -> bool:
    """Whether a staged `model.trainable` (a list of phases) enters a new phase at optimizer step `step`."""
    from medkor.model.schedule import parse_phases, phase_at

    trainable = getattr(pl_module, "hparams", {}).get("trainable")
    if not isinstance(trainable, (list, tuple)) or step < 1:
        return False
    phases = parse_phases(trainable)
    return phase_at(phases, step) != phase_at(phases, step - 1)


class CheckpointWriteWatch(Callback):
    """Holds the optimizer step until pending saves have copied what it changes; stops the run at the first
    training batch after a background save failed; waits for every write at the fit's end."""

    @staticmethod
    def _io(trainer: pl.Trainer) -> Optional[AsyncAtomicCheckpointIO]:
        io = getattr(trainer.strategy, "checkpoint_io", None)
        return io if isinstance(io, AsyncAtomicCheckpointIO) else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        io = self._io(trainer)
        if io is not None and io.pending() and _phase_switches_at(pl_module, trainer.global_step):
            io.wait_for_snapshots()  # the module's phase switch may clear moments a save is still copying

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        io = self._io(trainer)
        if io is not None:  # the step changes what a pending save is still copying
            io.wait_for_snapshots()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        io = self._io(trainer)
        if io is not None:
            io.raise_if_failed()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        io = self._io(trainer)
        if io is not None:  # the run's report lists checkpoints that are on disk
            io.wait()
            io.raise_if_failed()
