"""ForgettingGuard on data.sources: a named source's share raised and lowered by the watched loss (hysteresis),
the change recorded in the mixture from the next global batch; MixtureMetrics logs each source's rows and tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medkor.callbacks import ForgettingGuard, MixtureMetrics
from medkor.data.mixture import Mixture


class _Logger:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, metrics))


def _trainer(mix: Mixture, loss: float, step: int, logger: _Logger):
    return SimpleNamespace(datamodule=SimpleNamespace(mixture=mix), sanity_checking=False,
                           state=SimpleNamespace(fn="fit"), callback_metrics={"val/plain/loss": torch.tensor(loss)},
                           global_step=step, is_global_zero=True, loggers=[logger])


def test_a_named_source_is_raised_above_and_lowered_below_the_bounds():
    mix = Mixture(["dict", "plain"], [0.9, 0.1])
    guard = ForgettingGuard(monitor="val/plain/loss", start_above=3.0, stop_below=2.0, source="plain", raise_to=0.5)
    logger = _Logger()
    for step, loss, drawn in [(10, 2.5, 40), (20, 3.2, 80), (30, 2.4, 120), (40, 1.5, 160), (50, 3.5, 200)]:
        mix.drawn = drawn
        guard.on_validation_end(_trainer(mix, loss, step, logger), None)
    assert [(e, p) for e, p, _ in mix.changes] == [(0, 80), (0, 160), (0, 200)]
    shares = [dict(zip(mix.names, [w / sum(ws) for w in ws])) for _, _, ws in mix.changes]
    assert [round(s["plain"], 6) for s in shares] == [0.5, 0.1, 0.5]  # lowered back to its starting share
    assert round(shares[0]["dict"], 6) == 0.5
    assert [m["replay/active"] for _, m in logger.logged] == [0.0, 1.0, 1.0, 0.0, 1.0]
    resumed = ForgettingGuard(monitor="val/plain/loss", start_above=3.0, stop_below=2.0, source="plain", raise_to=0.5)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.state_dict() == {"raised": True, "lowered_share": pytest.approx(0.1)}


def test_a_source_that_is_not_in_the_mixture_is_named():
    guard = ForgettingGuard(monitor="val/plain/loss", source="english", raise_to=0.2)
    with pytest.raises(ValueError, match=r"source 'english' is not one of data.sources \(dict, plain\)"):
        guard.on_train_start(_trainer(Mixture(["dict", "plain"], [1, 1]), 4.0, 1, _Logger()), None)
    with pytest.raises(ValueError, match="raise_to must be a share"):
        ForgettingGuard(source="plain", raise_to=1.5)


def test_mixture_metrics_log_each_source_at_logging_steps_only():
    loader = SimpleNamespace(seen=lambda: {"ko": (12, 384), "en": (4, 100)})
    logger = _Logger()
    trainer = SimpleNamespace(is_global_zero=True, global_step=5, log_every_n_steps=5, loggers=[logger],
                              fit_loop=SimpleNamespace(_combined_loader=SimpleNamespace(flattened=[loader])))
    metrics = MixtureMetrics()
    metrics.on_train_batch_end(trainer, None, None, None, 0)
    trainer.global_step = 6
    metrics.on_train_batch_end(trainer, None, None, None, 0)
    trainer.global_step, trainer.accumulate_grad_batches = 10, 2
    metrics.on_train_batch_end(trainer, None, None, None, 4)  # inside an accumulation: not logged
    assert logger.logged == [(5, {"mix/ko/rows": 12.0, "mix/ko/tokens": 384.0, "mix/en/rows": 4.0, "mix/en/tokens": 100.0})]
