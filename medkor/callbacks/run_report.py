"""``RunReport``: where a run writes, and at its end what it produced and which commands come next."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from medkor.run.report import fit_end_lines, losses_text, say, shown_path, steps_text, validation_losses


class RunReport(Callback):
    """Prints the run folder at the start, and at the end of `fit` the last and best checkpoints,
    the KorMedMCQA summary and the `plot`/`validate`/`export` commands for this run.

    Args:
        config_files: the `--config` files of the run, repeated in the suggested commands.
        overrides: the run's `--model.*`/`--data.*` command-line options, repeated there too.
    """

    def __init__(self, config_files: Sequence[str] = (), overrides: Sequence[str] = ()) -> None:
        self.config_files = [str(c) for c in config_files]
        self.overrides = [str(o) for o in overrides]
        self._started: Optional[float] = None
        self._end: Optional[str] = None
        self._first_step = 0  # the global step this process started from (a resume's checkpoint step)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        if trainer.log_dir:
            say(trainer, f"run folder {shown_path(trainer.log_dir)}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_step = trainer.global_step  # restored by now

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_dir = Path(trainer.log_dir) if trainer.log_dir else None
        last, best, label = _checkpoints(trainer)
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        steps = trainer.global_step
        trained = steps_text(trainer.current_epoch, steps, steps - self._first_step, seconds)
        losses = validation_losses(trainer.callback_metrics)
        if losses:
            trained += f"; {losses_text(losses)}"
        trained += _accuracy_change(trainer)
        summary = run_dir / "kormedmcqa" / "summary.json" if run_dir is not None else None
        self._end = "\n".join(fit_end_lines(run_dir, last, best, label, summary, self.config_files, trained,
                                             self.overrides))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # after the progress bar has drawn its last frame (this callback runs after it), so these lines end the output
        if self._end:
            say(trainer, self._end)
            self._end = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._standalone_end(trainer, "validate")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._standalone_end(trainer, "test")

    @staticmethod
    def _standalone_end(trainer: pl.Trainer, stage: str) -> None:
        if not trainer.log_dir:
            return
        run_dir = Path(trainer.log_dir)
        files = [p for p in ("metrics.csv", "kormedmcqa/summary.json") if (run_dir / p).is_file()]
        say(trainer, f"{stage} results in {shown_path(run_dir)}" + (f" ({', '.join(files)})" if files else ""))


def _checkpoints(trainer: pl.Trainer) -> tuple[Optional[str], Optional[str], str]:
    """(last, best, label of best): best by a monitored metric when one is, else the newest checkpoint."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    last = next((cb.last_model_path for cb in callbacks if cb.last_model_path and Path(cb.last_model_path).exists()), None)
    monitored = [cb for cb in callbacks if cb.monitor and cb.best_model_path and Path(cb.best_model_path).exists()]
    if monitored:
        cb = monitored[0]
        score = f" {float(cb.best_model_score):.4f}" if cb.best_model_score is not None else ""
        return last, cb.best_model_path, f"best ckpt ({cb.monitor}{score})"
    saved = [cb.best_model_path for cb in callbacks if cb.best_model_path and Path(cb.best_model_path).exists()]
    newest = max(saved, key=lambda p: Path(p).stat().st_mtime_ns) if saved else None
    return last, newest, "epoch ckpt"


def _accuracy_change(trainer: pl.Trainer) -> str:
    from medkor.callbacks.kormedmcqa import KorMedMCQAEval

    evaluator = next((cb for cb in trainer.callbacks if isinstance(cb, KorMedMCQAEval)), None)
    if evaluator is None or evaluator.baseline is None or not evaluator.evaluations:
        return ""
    first, latest = evaluator.baseline.get("acc"), evaluator.evaluations[-1].get("acc")
    if first is None or latest is None:
        return ""
    return f"; KorMedMCQA {first:.3f} -> {latest:.3f} ({latest - first:+.3f})"
