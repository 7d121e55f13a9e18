"""MedKorDataModule: prepare_data builds without state, setup loads, loaders follow the contract."""

from __future__ import annotations

import pytest
import torch

from medkor.data import MedKorDataModule
from medkor.data.cache import CacheError
from medkor.data.sources import DataError


def test_prepare_setup_and_batches(data_dir, tokenizer_dir):
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32, batch_size=4,
                          prepare_data_per_node=False)
    assert dm.prepare_data_per_node is False
    assert dm.cache_dir == str(data_dir / ".cache")
    with pytest.raises(CacheError, match="medkor prepare"):
        dm.setup("fit")  # setup never builds
    dm.prepare_data()
    assert dm.datasets == {}  # prepare_data sets no state
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32) and batch["input_ids"].dtype == torch.long
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts & (batch["input_ids"] == 2)] == -100).all()  # BOS never a target
    val = list(dm.val_dataloader())
    assert sum(int(b["attention_mask"].sum()) for b in val) == dm.prepare_caches()[1].tokens


def test_val_fraction_without_validation_file(data_dir, tokenizer_dir):
    (data_dir / "validation.jsonl").unlink()
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32)
    assert [r.split for r in dm.cache_requests()] == ["train"]
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32, val_fraction=0.2)
    results = dm.prepare_caches()
    assert [r.split for r in results] == ["train", "validation"]
    assert sum(r.manifest["documents"] for r in results) == 60


def test_bad_options_and_missing_data(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="format 'poem' is not supported"):
        MedKorDataModule(data_dir=str(tmp_path), format="poem")
    with pytest.raises(ValueError, match="val_fraction"):
        MedKorDataModule(data_dir=str(tmp_path), val_fraction=1.5)
    with pytest.raises(ValueError, match="num_proc must be at least 1"):
        MedKorDataModule(data_dir=str(tmp_path), num_proc=0)
    with pytest.raises(DataError, match="no training data"):
        MedKorDataModule(data_dir=str(tmp_path), tokenizer_path=str(tokenizer_dir)).prepare_data()
    with pytest.raises(ValueError, match="tokenizer_path is not set"):
        MedKorDataModule(data_dir=str(tmp_path)).prepare_data()


def test_test_split_from_its_file_or_else_validation(data_dir, tokenizer_dir):
    def tokens(loader) -> int:
        return sum(int(b["attention_mask"].sum()) for b in loader)

    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32)
    dm.prepare_data()
    dm.setup("test")
    assert tokens(dm.test_dataloader()) == tokens(dm.val_dataloader())  # no test file: validation rows

    lines = (data_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    (data_dir / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32)
    results = {r.split: r for r in dm.prepare_caches()}
    assert set(results) == {"train", "validation", "test"} and results["test"].manifest["documents"] == 3
    dm.setup("test")  # a test file: only its rows are opened
    assert tokens(dm.test_dataloader()) == results["test"].tokens < results["validation"].tokens
    assert set(dm.datasets) == {"test"}
