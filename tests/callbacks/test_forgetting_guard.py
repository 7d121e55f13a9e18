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

START, STOP = 7.0, 5.9  # this seeded run reads about 7.3, 6.4, 5.5, 5.3: on at the 1st reading, off at the 3rd
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


@pytest.fixture(autouse=True)
def _one_thread():
    # a 1 M-parameter model: on a busy 2-core machine two threads per op cost 10x the time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit(tmp_path, name, ckpt_path=None):
    from medkor.callbacks.run_state import ResumeState
    from medkor.model import MedGemmaModule

    seed_everything(0)
    model = MedGemmaModule(model_name_or_path=str(DEMO / "tiny-gemma3"), tokenizer_path=str(DEMO / "tokenizer-extended"),
                           torch_dtype="float32", trainable="full", learning_rate=1e-2, warmup_steps=0)
    dm = _datamodule(tmp_path)
    guard = ForgettingGuard(monitor="val/plain/loss", start_above=START, stop_below=STOP)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / name / "ckpt", every_n_train_steps=2, save_top_k=-1,
                                  filename="step{step}", auto_insert_metric_name=False)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=16, val_check_interval=4, num_sanity_val_steps=0,
                      logger=CSVLogger(tmp_path / name, name="guard"), enable_progress_bar=False,
                      enable_model_summary=False, log_every_n_steps=1, deterministic=True,
                      callbacks=[guard, checkpoints, ResumeState()])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, dm, _rows(Path(trainer.log_dir) / "metrics.csv")


def test_guard_switches_as_the_logged_loss_says_and_a_resume_mixes_exactly(tmp_path):
    trainer, dm, rows = _fit(tmp_path, "whole")
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
    per_epoch = len(trainer.train_dataloader.sampler)
    drawn = [16 * (i + 1) for i in changed]
    assert switches == [((n - 1) // per_epoch, n - (n - 1) // per_epoch * per_epoch, states[i])
                        for n, i in zip(drawn, changed)]
    saved = torch.load(tmp_path / "whole/ckpt/step16.ckpt", weights_only=True)
    assert saved["MedKorDataModule"]["replay"]["switches"] == [list(s) for s in switches]

    # resumed from step 10 (replay on since step 8): the same batches, so the same losses and switches
    _, resumed_dm, resumed = _fit(tmp_path, "resumed", ckpt_path=tmp_path / "whole/ckpt/step10.ckpt")
    train = {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}
    again = {int(r["step"]): r["train/loss"] for r in resumed if r.get("train/loss")}
    assert again and all(train[step] == loss for step, loss in again.items()) and max(again) == max(train)
    assert resumed_dm.replay_mix.switches == switches


def test_guard_needs_metric_replay(tmp_path):
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.datamodule = _datamodule(tmp_path, mode="fixed")  # what Lightning sets at fit
    with pytest.raises(ValueError, match="needs data.replay with mode: metric"):
        ForgettingGuard().setup(trainer, None, "fit")
    with pytest.raises(ValueError, match="stop_below"):
        ForgettingGuard(start_above=2.0, stop_below=3.0)
