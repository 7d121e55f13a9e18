"""`SaveOnPreemption`: SIGTERM (and SLURM's requeue signal) saves a resumable checkpoint and stops the run.

SLURM and Kubernetes send SIGTERM some time before they kill a job. Lightning's own
handling stops only at the end of an epoch (or, on several ranks, at the next batch)
and exits with status 0 without saving; its SLURM requeue handler saves from inside
the signal handler, wherever the step happens to be. Here the handler only takes
note. At the next optimizer-step boundary (gradient accumulation complete, so no
partial gradient is lost) every rank agrees that a signal came, the checkpoint is
written to `<checkpoints>/last.ckpt`, a SLURM job with auto-requeue is requeued, and
`Preempted` is raised; `medkor fit` turns it into exit status 128 + the signal
number (143 for SIGTERM). `medkor fit ... --ckpt_path last` resumes from it exactly.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger("medkor")

LAST_NAME = "last.ckpt"


class Preempted(RuntimeError):
    """The run stopped on a signal after saving `path`."""

    def __init__(self, signum: int, path: Path, step: int) -> None:
        self.signum, self.path, self.step = signum, path, step
        name = signal.Signals(signum).name
        super().__init__(
            f"received {name}: saved {path} at global step {step}; resume with --ckpt_path last "
            f"(or --ckpt_path {path})"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """The run's checkpoint folder: the first ModelCheckpoint's, else `<run>/checkpoints`."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def _slurm_requeue_signal(trainer: pl.Trainer) -> Optional[int]:
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return int(environment.requeue_signal or signal.SIGUSR1)
    return None


def requeue_slurm_job() -> None:
    """Put this SLURM job back in the queue (what Lightning's auto-requeue does, at a safe moment)."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:  # no scontrol here, or it hangs
        log.warning(f"could not requeue SLURM job {job}: {err}; requeue it by hand (scontrol requeue {job})")
        return
    if result.returncode == 0:
        log.info(f"requeued SLURM job {job}")
    else:
        log.warning(f"could not requeue SLURM job {job}: {result.stderr.strip() or result.returncode}")


class SaveOnPreemption(Callback):
    """On SIGTERM (and the SLURM requeue signal with auto-requeue): save `last.ckpt` at the next step, then stop.

    `medkor fit` puts it first among the callbacks, so that a run stopping at the end of
    an epoch stops before any epoch-end evaluation.
    """

    def __init__(self) -> None:
        self._signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._requeue_signal: Optional[int] = None
        self._step_before = -1
        self._stop: Optional[Preempted] = None

    # ---- signals: the handler only takes note
    def _note(self, signum: int, frame: Any) -> None:
        if self._signum is None:
            self._signum = signum
            log.info(f"received {signal.Signals(signum).name}: saving a checkpoint at the next optimizer step")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has installed its handlers by now; replace them for the training loop
        if threading.current_thread() is not threading.main_thread():
            return
        self._requeue_signal = _slurm_requeue_signal(trainer)
        signums = [signal.SIGTERM] + ([self._requeue_signal] if self._requeue_signal else [])
        launcher = trainer.strategy.launcher

        def handler(signum: int, frame: Any) -> None:
            if self._signum is None and launcher is not None:
                launcher.kill(signum)  # processes this one launched get the signal too
            self._note(signum, frame)

        for signum in signums:
            self._previous[signum] = signal.signal(signum, handler)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    # ---- the save, at a step boundary
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._step_before:
            return  # mid-accumulation: the gradients so far would not be in the checkpoint
        received = trainer.strategy.reduce_boolean_decision(self._signum is not None, all=False)
        if not received:
            return
        signum = trainer.strategy.broadcast(self._signum or signal.SIGTERM, src=0) if trainer.world_size > 1 else self._signum
        signum = int(signum or signal.SIGTERM)
        path = checkpoint_dir(trainer) / LAST_NAME
        trainer.save_checkpoint(path)
        if trainer.is_global_zero and signum == self._requeue_signal:
            requeue_slurm_job()
        # Stop at the next hook: Lightning logs this batch's metrics after this hook, and
        # the resumed run starts after this batch, so its row must reach metrics.csv first.
        self._stop = Preempted(signum, path, trainer.global_step)

    def _stop_if_saved(self, trainer: pl.Trainer) -> None:
        if self._stop is None:
            return
        for logger in trainer.loggers:
            logger.save()
        stop, self._stop = self._stop, None
        raise stop

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._stop_if_saved(trainer)
        self._step_before = trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_saved(trainer)  # a resumed run validates where this one would have

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_saved(trainer)  # first in the callback list: before any epoch-end evaluation

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        self._stop_if_saved(trainer)
        # a finished run: bring an older last.ckpt (a preemption's or a step one) up to the
        # end, so `--ckpt_path last` on a finished run trains nothing again
        path = checkpoint_dir(trainer) / LAST_NAME
        if path.exists():
            trainer.save_checkpoint(path)
