"""``ForgettingGuard``: switch replay of an earlier stage's data by a watched validation loss."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from medkor.data.mixture import hysteresis

ACTIVE_METRIC = "replay/active"
SWITCHES_METRIC = "replay/switches"


class ForgettingGuard(Callback):
    """Turns `data.replay` on when the watched loss rises above `start_above` and off when it
    falls below `stop_below` (hysteresis), read after every validation.

    The watched loss is a whole validation set's loss (e.g. `val/plain_text/loss` from
    `data.val_sets`), not one training batch. After each validation it logs
    `replay/active` (1 or 0) and `replay/switches` (switches so far) and prints a line
    at each switch. A switch applies from the next training row drawn; the switches
    are kept by the datamodule in every checkpoint. Needs `data.replay` with `mode: metric`.

    Args:
        monitor: The validation loss to watch, as logged.
        start_above: Replay starts when the loss is above this.
        stop_below: Replay stops when the loss is below this (at most `start_above`).
    """

    def __init__(self, monitor: str = "val/plain_text/loss", start_above: float = 3.0, stop_below: float = 2.0) -> None:
        if not stop_below <= start_above:
            raise ValueError(f"ForgettingGuard: stop_below ({stop_below}) must not exceed start_above ({start_above})")
        self.monitor = monitor
        self.start_above = start_above
        self.stop_below = stop_below

    def _mix(self, trainer: pl.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        mix = getattr(datamodule, "replay_mix", None)
        replay = getattr(datamodule, "replay", None)
        if mix is None or replay is None or replay.mode != "metric":
            raise ValueError(
                "ForgettingGuard needs data.replay with mode: metric (replay of an earlier stage's data "
                "that it can switch); add it, or remove the callback"
            )
        return mix

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._mix(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.monitor not in trainer.callback_metrics:
            names = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val")))
            raise ValueError(f"ForgettingGuard: no {self.monitor!r} was logged (logged: {names or 'none'}); "
                             "set monitor to a val/<name>/loss of data.val_sets")
        value = float(trainer.callback_metrics[self.monitor])
        mix = self._mix(trainer)
        was = mix.on
        now = hysteresis(was, value, self.start_above, self.stop_below)
        if now != was:
            mix.switch(now)
            bound = f"above {self.start_above}" if now else f"below {self.stop_below}"
            rank_zero_info(
                f"[medkor] replay {'on' if now else 'off'} at step {trainer.global_step}: {self.monitor} "
                f"{value:.4f} {bound} (ratio {mix.ratio}, from epoch {mix.epoch} row {mix.drawn})"
            )
        metrics = {ACTIVE_METRIC: float(now), SWITCHES_METRIC: float(len(mix.switches))}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
