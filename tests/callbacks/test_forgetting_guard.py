"""ForgettingGuard under a real Trainer: switches where the logged loss says, logged, in checkpoints."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from medkor.callbacks import ForgettingGuard
from medkor.data import MedKorDataModule
from medkor.data.mixture import hysteresis
from tests.data.conftest import korean_docs, write_jsonl

START, STOP = 7.5, 6.0  # this seeded run reads about 7.2, 7.8, 5.7, 5.6: on at the 2nd reading, off at the 3rd
DEMO = Path(__file__).resolve().parents[2] / "medkor/assets/demo"


def _datamodule(tmp_path, mode="metric"):
    write_jsonl(tmp_path / "dict/train.jsonl",
                [{"term": f"용어{i}", "definition": "혈압이 정상보다 높은 상태. " * (1 + i % 3)} for i in range(64)])
    write_jsonl(tmp_path / "plain/train.jsonl", korean_docs(40))
    write_jsonl(tmp_path / "plain/validation.jsonl", korean_docs(8, start=500))
    return MedKorDataModule(
        data_dir=str(tmp_path / "dict"), tokenizer_path=str(DEMO / "tokenizer-extended"), format="dictionary",
        max_length=64, batch_size=4, val_sets={"plain": {"path": str(tmp_path / "plain/validation.jsonl")}},
        replay={"path": str(tmp_path / "plain"), "format": "text", "ratio": 0.5, "mode": mode},
    )


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_guard_switches_as_the_logged_loss_says_and_checkpoints_the_switches(tmp_path):
    from medkor.model import MedGemmaModule

    seed_everything(0)
    model = MedGemmaModule(model_name_or_path=str(DEMO / "tiny-gemma3"), tokenizer_path=str(DEMO / "tokenizer-extended"),
                           torch_dtype="float32", learning_rate=1e-2, warmup_steps=0)
    dm = _datamodule(tmp_path)
    # on at the first reading (any loss is above 0), off once the plain loss is below 7.4
    guard = ForgettingGuard(monitor="val/plain/loss", start_above=START, stop_below=STOP)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=16, val_check_interval=4, num_sanity_val_steps=0,
                      logger=CSVLogger(tmp_path / "logs", name="guard"), enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[guard, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)])
    trainer.fit(model, datamodule=dm)
    rows = _rows(Path(trainer.log_dir) / "metrics.csv")
    losses = {int(r["step"]): float(r["val/plain/loss"]) for r in rows if r.get("val/plain/loss")}
    active = {int(r["step"]): r["replay/active"] == "1.0" for r in rows if r.get("replay/active")}
    assert sorted(active) == [4, 8, 12, 16] and len(losses) == 4  # Lightning logs validation a step index lower
    readings = list(zip([losses[s] for s in sorted(losses)], [active[s] for s in sorted(active)]))
    on = False
    for loss, logged in readings:  # every reading: the state the rule gives for the logged loss
        on = hysteresis(on, loss, START, STOP)
        assert logged is on, readings
    switches = dm.replay_mix.switches
    states = [logged for _, logged in readings]
    changed = [i for i, (a, b) in enumerate(zip([False] + states, states)) if a != b]
    assert changed, "no switch: the bounds no longer straddle this run's losses"
    # reading i follows 4 (i + 1) steps of 4 rows: the switch applies from the next row drawn
    assert [(p, on) for _, p, on in switches] == [(16 * (i + 1), states[i]) for i in changed]
    saved = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=True)
    assert saved["MedKorDataModule"]["replay"]["switches"] == [list(s) for s in switches]


def test_guard_needs_metric_replay(tmp_path):
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.datamodule = _datamodule(tmp_path, mode="fixed")  # what Lightning sets at fit
    with pytest.raises(ValueError, match="needs data.replay with mode: metric"):
        ForgettingGuard().setup(trainer, None, "fit")
    with pytest.raises(ValueError, match="stop_below"):
        ForgettingGuard(start_above=2.0, stop_below=3.0)
