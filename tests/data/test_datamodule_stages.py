"""validate and test build and open only what they score: no training file read, tokenized or leak-scanned."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from medkor.data import MedKorDataModule
from medkor.data.sources import DataError

from tests.data.conftest import korean_docs, write_jsonl

EVAL = Path(__file__).resolve().parents[2] / "medkor" / "assets" / "demo" / "kormedmcqa"


class _Scorer(pl.LightningModule):
    """The smallest module with a loss per batch: what validate and test need from a model."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Embedding(1024, 1)

    def _loss(self, batch: dict, name: str) -> torch.Tensor:
        loss = self.weight(batch["input_ids"]).float().mean()
        self.log(name, loss, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return self._loss(batch, "val/loss")

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return self._loss(batch, "test/loss")


def _trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def _cache_entries(cache_dir: Path) -> list[str]:
    return sorted(p.name.rsplit("-", 1)[0] if p.is_dir() else p.name for p in cache_dir.iterdir()
                  if not p.name.startswith(".") and p.suffix not in (".lock", ".owner") and p.name != "fingerprints.json")


def test_validate_with_a_folder_holding_only_validation_data(tmp_path, tokenizer_dir):
    data = tmp_path / "data"
    write_jsonl(data / "validation.jsonl", korean_docs(12, start=500))
    dm = MedKorDataModule(data_dir=str(data), tokenizer_path=str(tokenizer_dir), max_length=32, batch_size=4,
                          num_proc=1, eval_source=str(EVAL))
    metrics = _trainer().validate(_Scorer(), datamodule=dm, verbose=False)
    assert metrics and metrics[0]["val/loss"] == pytest.approx(metrics[0]["val/loss"])  # a number was scored
    assert set(dm.datasets) == {"validation"}
    assert _cache_entries(data / ".cache") == ["validation"]  # nothing else built, no leak report written


def test_validate_and_test_never_read_the_training_corpus(tmp_path, tokenizer_dir):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", ['{"text": "좋음"}', "{broken json"], raw=True)  # fit would stop at line 2
    write_jsonl(data / "validation.jsonl", korean_docs(8, start=500))
    write_jsonl(data / "test.jsonl", korean_docs(4, start=900))
    dm = MedKorDataModule(data_dir=str(data), tokenizer_path=str(tokenizer_dir), max_length=32, batch_size=4,
                          num_proc=1, eval_source=str(EVAL), val_sets={"plain": str(data / "validation.jsonl")})
    _trainer().validate(_Scorer(), datamodule=dm, verbose=False)
    assert set(dm.datasets) == {"validation", "val-plain"}
    dm = MedKorDataModule(data_dir=str(data), tokenizer_path=str(tokenizer_dir), max_length=32, batch_size=4,
                          num_proc=1, eval_source=str(EVAL))
    metrics = _trainer().test(_Scorer(), datamodule=dm, verbose=False)
    assert "test/loss" in metrics[0] and set(dm.datasets) == {"test"}
    assert _cache_entries(data / ".cache") == ["test", "val-plain", "validation"]
    with pytest.raises(DataError, match=r"train\.jsonl:2:"):  # fit reads (and refuses) it as before
        MedKorDataModule(data_dir=str(data), tokenizer_path=str(tokenizer_dir), max_length=32,
                         num_proc=1).prepare_caches("fit")


def test_validation_carved_from_train_reads_train_but_builds_only_validation(tmp_path, tokenizer_dir):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", korean_docs(40))
    dm = MedKorDataModule(data_dir=str(data), tokenizer_path=str(tokenizer_dir), max_length=32, num_proc=1,
                          val_fraction=0.25)
    assert [r.split for r in dm.cache_requests("validate")] == ["validation"]
    validation = dm.prepare_caches("validate")[0]
    fit = {r.split: r for r in dm.prepare_caches("fit")}
    assert fit["validation"].status == "hit" and fit["validation"].key == validation.key  # one cache for both


def test_nothing_to_validate_on_is_one_clear_error(tmp_path, tokenizer_dir):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", korean_docs(5))
    dm = MedKorDataModule(data_dir=str(data), tokenizer_path=str(tokenizer_dir), max_length=32)
    with pytest.raises(DataError, match="nothing to validate on: no validation.jsonl .* data.val_sets is empty"):
        dm.prepare_caches("validate")
    with pytest.raises(DataError, match="nothing to test on: no test.jsonl"):
        dm.setup("test")
