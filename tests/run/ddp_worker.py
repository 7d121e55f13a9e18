"""Callbacks that run inside every rank of a `medkor fit` DDP run started by tests/run/test_ddp.py.

They are named in the run's YAML (`tests.run.ddp_worker.RecordRows`, `...KillGroupAt`),
so Lightning's subprocess launcher starts them on rank 1 as well as on rank 0.

`RecordRows` appends one JSON line per training batch to `<out>/rank<R>.jsonl`: the
global step, epoch and batch index, a hash of every row of the batch's `input_ids`
and a hash of the torch CPU generator's state when the batch starts (after
`ResumeState` has restored it on a resumed run). A first line describes the rank:
its process, world size, strategy and the training sampler Lightning left in place.

`KillGroupAt` SIGKILLs the whole process group (rank 0 and the rank processes
Lightning started) when global rank 0 reaches a step: a node dying, with no handler,
no `finally` and no last collective on any rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


def digest(tensor: torch.Tensor) -> str:
    return hashlib.blake2b(tensor.detach().cpu().contiguous().numpy().tobytes(), digest_size=8).hexdigest()


class RecordRows(Callback):
    """What each rank trains on: one line per batch in `<out>/rank<R>.jsonl`."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def _write(self, trainer: Any, record: dict[str, Any]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / f"rank{trainer.global_rank}.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the line survives a SIGKILL right after it

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        sampler = trainer.train_dataloader.sampler
        self._write(trainer, {
            "kind": "start",
            "pid": os.getpid(),
            "pgid": os.getpgrp(),
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "backend": getattr(trainer.strategy, "_process_group_backend", None),
            "wrapped": type(trainer.model).__name__,
            "loader": type(trainer.train_dataloader).__name__,
            "sampler": type(sampler).__name__,
            "sampler_rank": getattr(sampler, "rank", None),
            "sampler_replicas": getattr(sampler, "num_replicas", None),
            "start_step": trainer.global_step,
        })

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._write(trainer, {
            "kind": "batch",
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "rows": [digest(row) for row in batch["input_ids"]],
            "rng": digest(torch.get_rng_state()),
        })


class KillGroupAt(Callback):
    """SIGKILL this run's whole process group when global rank 0 is about to train the batch of `step`.

    The run must have been started as the leader of its own process group
    (`subprocess.Popen(..., start_new_session=True)`); anything else is refused, so
    that the test runner's own group is never the target.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != 0 or trainer.global_step != self.step:
            return
        if os.getpgrp() != os.getpid():
            raise RuntimeError("KillGroupAt: rank 0 does not lead its process group; start it with start_new_session=True")
        os.killpg(os.getpgrp(), signal.SIGKILL)
