"""`SaveOnPreemption`: SIGTERM, Ctrl-C (SIGINT) and SLURM's requeue signal save a resumable checkpoint and stop the run.

SLURM and Kubernetes send SIGTERM some time before they kill a job. Lightning's own
handling stops only at the end of an epoch (or, on several ranks, at the next batch)
and exits with status 0 without saving; its SLURM requeue handler saves from inside
the signal handler, wherever the step happens to be; Ctrl-C saves nothing. Here the
handler only takes note, and the run acts at the next safe point:

- in training, at the next optimizer-step boundary (gradient accumulation complete,
  so no partial gradient is lost). One process reads its own flag (a host value, no
  device read); several ranks agree at logging steps, in the same collective as
  `NonFiniteGuard`'s read, so a step between logging steps waits on nothing;
- in validation, after the current batch;
- in a KorMedMCQA evaluation (one process), before its next batch.

`medkor validate` and `medkor test` hold no training state: a signal there stops the
evaluation after the current batch (one process) with the same exit status, and
saves nothing. A signal ignored when the process started (Ctrl-C for a job started
with `&` from a script) stays ignored.

There the checkpoint is written to `<checkpoints>/last.ckpt`, a SLURM job with
auto-requeue is requeued, and `Preempted` is raised; `medkor fit` turns it into exit
status 128 + the signal number (143 for SIGTERM, 130 for Ctrl-C). `medkor fit ...
--ckpt_path last` resumes from it (exactly, when the save came at a step boundary).
A second Ctrl-C stops at once, without saving (exit status 130).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator, Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from medkor.callbacks.logging_steps import is_reading_step

log = logging.getLogger("medkor")

LAST_NAME = "last.ckpt"
_SIGNAL_CEILING = 128  # above every signal number: ceiling - signum, max-reduced, names the lowest one received


class Preempted(RuntimeError):
    """The run stopped on a signal after saving `path` (`path` None: stopped at once, nothing saved)."""

    def __init__(self, signum: int, path: Optional[Path], step: int, where: str = "",
                 evaluation_only: bool = False) -> None:
        self.signum, self.path, self.step = signum, path, step
        name = signal.Signals(signum).name
        if evaluation_only:  # validate / test: no training state, so nothing to save and nothing to resume
            super().__init__(f"received {name}: stopped after the current batch{where}; an evaluation saves no "
                             "checkpoint and writes no scores when stopped: run it again to score the model")
            return
        if path is None:
            super().__init__(f"received {name} again: stopped at once at global step {step}, nothing saved "
                             "since; an earlier last.ckpt, if any, resumes with --ckpt_path last")
            return
        super().__init__(
            f"received {name}: saved {path} at global step {step}{where}; resume with --ckpt_path last "
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
    """On SIGTERM, SIGINT (and the SLURM requeue signal with auto-requeue): save `last.ckpt` soon, then stop.

    Saved at the next step boundary in training, after the current batch in validation,
    before the next batch of a KorMedMCQA evaluation. A second SIGINT stops at once.
    `medkor fit` puts it first among the callbacks, so that a run stopping at the end of
    an epoch stops before any epoch-end evaluation.
    """

    def __init__(self) -> None:
        self._signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._requeue_signal: Optional[int] = None
        self._step_before = -1
        self._stop: Optional[Preempted] = None
        self._trainer: Optional[pl.Trainer] = None

    # ---- signals: the handler only takes note (a second Ctrl-C stops at once)
    def _note(self, signum: int, frame: Any) -> None:
        if self._signum is None:
            self._signum = signum
            again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
            fn = getattr(getattr(self._trainer, "state", None), "fn", None)
            if fn in ("validate", "test"):
                log.info(f"received {signal.Signals(signum).name}: stopping after the current batch")
            else:
                log.info(f"received {signal.Signals(signum).name}: saving a checkpoint after the current step or "
                         f"batch{again}")
        elif signum == signal.SIGINT:
            self._restore()  # a third one is Python's own KeyboardInterrupt
            step = self._trainer.global_step if self._trainer is not None else 0
            raise Preempted(signum, None, step)

    def _install(self, trainer: pl.Trainer) -> bool:
        """Take over SIGTERM, SIGINT (and the SLURM requeue signal); False off the main thread (signals cannot be).

        A signal ignored when the run starts stays ignored: a job started with `&` from a
        script ignores Ctrl-C, as the shell means it to, and `nohup` or a supervisor may
        ignore others.
        """
        self._trainer = trainer
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return False
        self._requeue_signal = _slurm_requeue_signal(trainer)
        signums = [signal.SIGTERM, signal.SIGINT] + ([self._requeue_signal] if self._requeue_signal else [])
        launcher = getattr(trainer.strategy, "launcher", None)

        def handler(signum: int, frame: Any) -> None:
            if self._signum is None and launcher is not None:
                launcher.kill(signum)  # processes this one launched get the signal too
            self._note(signum, frame)

        for signum in dict.fromkeys(signums):
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, handler)
        return True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning has installed its handlers by now; replace them for the training loop
        if not self._install(trainer):
            return
        # Lightning broadcasts, and reads back, its own SIGTERM flag before every batch on several
        # ranks; with its handler replaced that flag never changes, so that read only makes every
        # step wait. The agreement above (at logging steps) takes its place.
        epoch_loop = trainer.fit_loop.epoch_loop
        if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
            epoch_loop._broadcast_sigterm_tensor = lambda: None

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
        if trainer.world_size > 1 and not is_reading_step(trainer):
            return  # several ranks agree at logging steps only: a collective and a read
        signum = self._agreed_signal(trainer, with_guard=True)
        if signum is None:
            return
        path = self._save(trainer, signum)
        # Stop at the next hook: Lightning logs this batch's metrics after this hook, and
        # the resumed run starts after this batch, so its row must reach metrics.csv first.
        self._stop = Preempted(signum, path, trainer.global_step)

    def _agreed_signal(self, trainer: pl.Trainer, with_guard: bool = False) -> Optional[int]:
        """The signal any rank received (the lowest number, so every rank names the same one), or None.

        One process: its own flag, a host value. Several: one all-reduce and one read,
        shared with `NonFiniteGuard`'s read of its pending checks when `with_guard`.
        """
        if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return self._signum
        received = self._signum is not None
        mine = [float(received), float(_SIGNAL_CEILING - self._signum) if received else 0.0]  # both max-reduced
        guard = _guard(trainer) if with_guard else None
        if guard is not None:
            any_received, lowest = guard.read_pending(trainer, extra=mine)
        else:
            values = torch.tensor(mine, dtype=torch.float32, device=trainer.strategy.root_device)
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
            any_received, lowest = values.tolist()
        return int(_SIGNAL_CEILING - lowest) if any_received else None

    def _save(self, trainer: pl.Trainer, signum: int) -> Path:
        path = checkpoint_dir(trainer) / LAST_NAME
        trainer.save_checkpoint(path)
        io = trainer.strategy.checkpoint_io
        for finish in ("wait", "raise_if_failed"):  # written in the background: on disk before the run stops
            getattr(io, finish, lambda: None)()
        if trainer.is_global_zero and signum == self._requeue_signal:
            requeue_slurm_job()
        return path

    # ---- the save, in validation and in an evaluation
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.state.fn == "validate":
            self.stop_evaluation_if_signalled(trainer, " of validation")
            return
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        self.stop_now_if_signalled(trainer, "in validation")

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.stop_evaluation_if_signalled(trainer, " of the test set")

    # ---- `medkor validate` / `medkor test`: nothing to save, stop after the current batch
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._restore()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def stop_evaluation_if_signalled(self, trainer: pl.Trainer, where: str) -> None:
        """In `validate` or `test` (one process): raise `Preempted` (nothing saved) if a signal came."""
        if self._signum is not None and trainer.world_size <= 1:
            raise Preempted(self._signum, None, trainer.global_step, where, evaluation_only=True)

    def stop_now_if_signalled(self, trainer: pl.Trainer, where: str) -> None:
        """Save `last.ckpt` and raise `Preempted` now if a signal came (every rank calls this at the same point)."""
        signum = self._agreed_signal(trainer)
        if signum is None:
            return
        path = self._save(trainer, signum)
        for logger in trainer.loggers:
            logger.save()
        raise Preempted(signum, path, trainer.global_step, f" ({where})")

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
        if trainer.state.fn == "validate":
            self._install(trainer)
            return
        self._stop_if_saved(trainer)  # a resumed run validates where this one would have

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_saved(trainer)  # first in the callback list: before any epoch-end evaluation

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        self._stop_if_saved(trainer)
        if self._signum is not None:  # came after the last step: the run is over, nothing more to save
            log.info(f"received {signal.Signals(self._signum).name} as the run ended: nothing left to stop")
        # a finished run: bring an older last.ckpt (a preemption's or a step one) up to the
        # end, so `--ckpt_path last` on a finished run trains nothing again
        path = checkpoint_dir(trainer) / LAST_NAME
        if path.exists():
            trainer.save_checkpoint(path)


def _guard(trainer: pl.Trainer) -> Any:
    from medkor.callbacks.finite_guard import NonFiniteGuard

    return next((c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)), None)


def between_batches(trainer: pl.Trainer, context: Callable[[], ContextManager[Any]]) -> Callable[[], ContextManager[Any]]:
    """`context` (entered around each batch of an evaluation), acting on a signal that came when the batch is done.

    One process only: ranks may hold different numbers of evaluation batches, so several
    ranks act at the next step boundary instead.
    """
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveOnPreemption)), None)
    if saver is None or trainer.world_size > 1:
        return context
    if trainer.state.fn in ("validate", "test"):
        @contextmanager
        def stopped() -> Iterator[Any]:
            with context() as inner:
                yield inner
            saver.stop_evaluation_if_signalled(trainer, " of a KorMedMCQA evaluation")

        return stopped
    if trainer.state.fn != "fit":
        return context

    @contextmanager
    def checked() -> Iterator[Any]:
        with context() as inner:
            yield inner
        saver.stop_now_if_signalled(trainer, "in a KorMedMCQA evaluation")  # not reached on an error

    return checked
