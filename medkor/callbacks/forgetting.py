"""``ForgettingGuard``: raise or lower a named source's share by a watched validation loss; ``MixtureMetrics``:
rows and tokens of each source trained, logged and printed at the end of fit."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from medkor.callbacks.logging_steps import is_logging_step
from medkor.data.mixture import Mixture, ReplayMix, hysteresis

ACTIVE_METRIC = "replay/active"
SWITCHES_METRIC = "replay/switches"


class ForgettingGuard(Callback):
    """Raises a source's share of the training rows when the watched loss rises above `start_above`
    and lowers it again when the loss falls below `stop_below` (hysteresis), read after every validation.

    With `data.replay` (`mode: metric`) the source is the replay (raised to its `ratio`,
    lowered to none). With `data.sources`, `source` names one of them: raised to the
    share `raise_to`, lowered back to the share it had at the start (or `lower_to`).
    The watched loss is a whole validation set's loss (e.g. `val/plain_text/loss` from
    `data.val_sets`), not one training batch. After each validation it logs
    `replay/active` (1 or 0) and `replay/switches` (changes so far) and prints a line at
    each change. A change applies from the next global batch; the changes are kept by
    the datamodule in every checkpoint.

    Args:
        monitor: The validation loss to watch, as logged.
        start_above: The share is raised when the loss is above this.
        stop_below: The share is lowered when the loss is below this (at most `start_above`).
        source: The source of `data.sources` to raise (default: `data.replay`).
        raise_to: Its share while raised (`data.sources` only).
        lower_to: Its share while lowered (default: its share at the start).
    """

    def __init__(self, monitor: str = "val/plain_text/loss", start_above: float = 3.0, stop_below: float = 2.0,
                 source: Optional[str] = None, raise_to: Optional[float] = None,
                 lower_to: Optional[float] = None) -> None:
        if not stop_below <= start_above:
            raise ValueError(f"ForgettingGuard: stop_below ({stop_below}) must not exceed start_above ({start_above})")
        for name, share in (("raise_to", raise_to), ("lower_to", lower_to)):
            if share is not None and not 0.0 <= share < 1.0:
                raise ValueError(f"ForgettingGuard: {name} must be a share in [0, 1), got {share}")
        self.monitor = monitor
        self.start_above = start_above
        self.stop_below = stop_below
        self.source = source
        self.raise_to = raise_to
        self.lower_to = lower_to
        self._raised = False
        self._lowered_share: Optional[float] = None

    def _mix(self, trainer: pl.Trainer) -> Mixture:
        datamodule = getattr(trainer, "datamodule", None)
        if self.source is None:
            mix = getattr(datamodule, "replay_mix", None)
            replay = getattr(datamodule, "replay", None)
            if mix is None or replay is None or replay.mode != "metric":
                raise ValueError(
                    "ForgettingGuard needs data.replay with mode: metric (replay of an earlier stage's data "
                    "that it can switch), or `source` naming one of data.sources; add one, or remove the callback"
                )
            return mix
        mix = getattr(datamodule, "mixture", None)
        if mix is None or self.source not in mix.names:
            names = ", ".join(mix.names) if mix is not None else "none"
            raise ValueError(f"ForgettingGuard: source {self.source!r} is not one of data.sources ({names}); "
                             "set source to one of them")
        if self.raise_to is None:
            raise ValueError("ForgettingGuard: set raise_to, the share of the rows the source gets while raised")
        return mix

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.source is None:
            self._mix(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.source is not None:
            self._mix(trainer)  # data.sources' mixture exists once the data is set up: checked before a step

    def _is_raised(self, mix: Mixture) -> bool:
        if isinstance(mix, ReplayMix) and self.source is None:
            return mix.on
        return self._raised

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.monitor not in trainer.callback_metrics:
            names = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val")))
            raise ValueError(f"ForgettingGuard: no {self.monitor!r} was logged (logged: {names or 'none'}); "
                             "set monitor to a val/<name>/loss of data.val_sets")
        value = float(trainer.callback_metrics[self.monitor])
        mix = self._mix(trainer)
        was = self._is_raised(mix)
        now = hysteresis(was, value, self.start_above, self.stop_below)
        if now != was:
            bound = f"above {self.start_above}" if now else f"below {self.stop_below}"
            if isinstance(mix, ReplayMix) and self.source is None:
                mix.switch(now)
                what = f"replay {'on' if now else 'off'}"
                detail = f"ratio {mix.ratio}"
            else:
                if self._lowered_share is None:
                    self._lowered_share = mix.shares()[self.source] if self.lower_to is None else self.lower_to
                share = self.raise_to if now else self._lowered_share
                mix.set_share(self.source, share)
                self._raised = now
                what = f"source {self.source} {'raised' if now else 'lowered'} to {share:.1%} of the rows"
                detail = "shares " + ", ".join(f"{n} {s:.1%}" for n, s in mix.shares().items())
            rank_zero_info(f"[medkor] {what} at step {trainer.global_step}: {self.monitor} {value:.4f} {bound} "
                           f"({detail}, from epoch {mix.epoch} row {mix.drawn})")
        metrics = {ACTIVE_METRIC: float(now), SWITCHES_METRIC: float(len(mix.changes))}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"raised": self._raised, "lowered_share": self._lowered_share}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._raised = bool(state_dict.get("raised", False))
        self._lowered_share = state_dict.get("lowered_share")


class MixtureMetrics(Callback):
    """`mix/<name>/rows` and `mix/<name>/tokens` of every source trained so far, logged with `train/loss`
    (the same logging steps, the same metrics.csv row), and the totals at the end of training: logged once
    more at the last step (a row of their own when that step did not log) and printed, one line per source.
    The counts are host integers the training loader keeps from the global order
    (`ResumableDataLoader.seen`): nothing is read from the device, and nothing is logged between logging steps.
    `medkor fit` adds it to every run; it does nothing without several sources."""

    @staticmethod
    def _seen(trainer: pl.Trainer) -> dict[str, tuple[int, int]]:
        loader = getattr(trainer.fit_loop, "_combined_loader", None)
        loaders = getattr(loader, "flattened", None) or []
        for candidate in loaders:
            if hasattr(candidate, "seen"):
                return candidate.seen()
        return {}

    @staticmethod
    def _metrics(seen: dict[str, tuple[int, int]]) -> dict[str, float]:
        return {f"mix/{name}/{what}": float(value) for name, counts in seen.items()
                for what, value in zip(("rows", "tokens"), counts)}

    def __init__(self) -> None:
        self._logged: Optional[dict[str, float]] = None  # the latest counts logged in this process
        self._epoch = 0  # the epoch of the latest training batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._epoch = trainer.current_epoch
        if not is_logging_step(trainer):
            return  # Lightning writes the logged values of this step after this hook, in train/loss's row
        metrics = self._metrics(self._seen(trainer))
        for name, value in metrics.items():
            # the same counts on every rank (the global order): no sync, a row per logging step
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)
        self._logged = metrics or None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = self._metrics(self._seen(trainer))
        if not metrics or metrics == self._logged or not trainer.is_global_zero:
            return
        # the totals after the last step, at that step's number (the step numbering of train/loss)
        step = max(trainer.fit_loop.epoch_loop._batches_that_stepped - 1, 0)
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": self._epoch}, step=step)
        self._logged = metrics

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seen = self._seen(trainer)
        rows = sum(r for r, _ in seen.values())
        tokens = sum(t for _, t in seen.values())
        for name, (r, t) in seen.items():
            rank_zero_info(f"[medkor] mix: {name} {r:,} rows ({r / max(rows, 1):.1%}), {t:,} tokens "
                           f"({t / max(tokens, 1):.1%}) trained")
