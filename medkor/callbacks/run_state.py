"""`ResumeState`: what a checkpoint needs besides weights, optimizer and loops to resume exactly.

Lightning checkpoints hold the weights, optimizer, scheduler, loop counters and the
training loader's position (`medkor.data.loader`), but not the random generators:
a resumed run would draw other dropout masks than the uninterrupted one. This
callback stores the generators' state at every save and puts it back just before
the first training batch of a resumed run (after Lightning has opened the loaders
and run the baseline, neither of which draws from them), and makes sure the training
loader gets its position inside the epoch back. It also flushes the loggers
at every save, so the metrics of every step a checkpoint covers are on disk when a
run is killed right after it.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def rng_states() -> dict[str, Any]:
    """The global generators of torch (CPU and CUDA), numpy and Python, as plain values and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(state), gauss],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


class ResumeState(Callback):
    """Random generator state of every rank in every checkpoint, restored when a run resumes; loggers flushed at every save.

    `medkor fit` adds it to every run; add it yourself when driving a Trainer from Python.
    """

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None
        self._flush_next = False

    def state_dict(self) -> dict[str, Any]:
        # Lightning builds the checkpoint on every rank and writes rank zero's: gather every
        # rank's generators into it (ranks draw differently when their batches differ)
        mine = rng_states()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return {"rng": [mine]}
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, mine)
        return {"rng": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng")
        if isinstance(states, dict):  # one state for all ranks
            states = [states]
        if not states:
            return
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        world = torch.distributed.get_world_size() if distributed else 1
        # another number of ranks (an elastic resume): the data order is the same global one, but each
        # rank's draws (dropout) depend on its slice, so no state fits exactly; every rank takes rank zero's
        self._pending = states[rank] if len(states) == world else states[0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning hands the checkpoint's loader position to the training loader only when
        # it opens that loader after restoring; `estimated_stepping_batches` in
        # configure_optimizers opens it before, and the position would be dropped. Hand it
        # over now: the loader draws no index before the first batch is asked for.
        trainer.fit_loop._load_combined_loader_states()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._flush(trainer)
        self._flush_next = True  # the row of the batch that ended at this save is logged after it

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._flush_next:
            self._flush(trainer)
            self._flush_next = False
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    @staticmethod
    def _flush(trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
