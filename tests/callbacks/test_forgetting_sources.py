"""ForgettingGuard on data.sources: a named source's share raised and lowered by the watched loss (hysteresis),
the change recorded in the mixture from the next global batch; MixtureMetrics logs each source's rows and tokens."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

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


def _mixture_fit(repo_root: Path, tmp: Path, steps: int) -> Path:
    """A short fit of configs/demo/mixture.yaml (`steps` steps of 2 rows of 128 tokens, logging every 3); its metrics.csv."""
    from medkor.lightning_cli import run_cli

    config = yaml.safe_load((repo_root / "configs/demo/mixture.yaml").read_text(encoding="utf-8"))
    trainer = config["trainer"]
    trainer["logger"][0]["init_args"]["save_dir"] = str(tmp / "logs")
    trainer.update(max_epochs=1, limit_train_batches=steps, limit_val_batches=1, log_every_n_steps=3)
    config["data"].update(batch_size=2, max_length=128)
    config["data"].pop("val_sets", None)
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    config["data"]["cache_dir"] = str(tmp / "cache")
    config["data"].pop("eval_source", None)
    path = tmp / "mixture.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    threads = torch.get_num_threads()
    try:
        run_cli(["fit", "--config", str(path), "--trainer.enable_checkpointing", "false"])
    finally:
        torch.set_num_threads(threads)
    (csv_path,) = (tmp / "logs").rglob("metrics.csv")
    return csv_path


def test_mixture_metrics_share_train_loss_rows_and_end_with_the_totals(repo_root, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(repo_root)
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with open(_mixture_fit(repo_root, tmp_path, steps=7), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    mixed = [r for r in rows if r.get("mix/exam/rows")]
    # logged with train/loss: the same step, the same row, the epoch filled
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [2, 5]
    assert [int(r["step"]) for r in mixed] == [2, 5, 6]
    assert all(r["epoch"] == "0" for r in mixed)
    assert all(r["train/loss"] for r in mixed[:2])
    names = ("plain_text", "dictionary", "exam")
    total = [sum(float(r[f"mix/{n}/rows"]) for n in names) for r in mixed]
    assert total == [3 * 2, 6 * 2, 7 * 2]  # batch_size 2: every row of every step, counted once
    lines = [r.getMessage() for r in caplog.records if "[medkor] mix:" in r.getMessage()]
    assert len(lines) == 3
    for line in lines:  # the printed totals are the last row's
        name, count = line.split("mix: ")[1].split(" rows")[0].split()
        assert float(mixed[-1][f"mix/{name}/rows"]) == int(count.replace(",", ""))
