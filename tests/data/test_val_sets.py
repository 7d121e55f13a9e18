"""Named validation sets: each its own format and cache, logged as `val/<name>/loss`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from medkor.data import MedKorDataModule
from medkor.data.sources import DataError
from tests.data.conftest import korean_docs, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "medkor/assets/demo"
ENTRIES = [{"term": f"용어{i}", "definition": "혈압이 정상보다 높은 상태를 말한다. " * (1 + i % 3)} for i in range(30)]


@pytest.fixture
def stage_dir(tmp_path):
    folder = tmp_path / "dict"
    write_jsonl(folder / "train.jsonl", ENTRIES)
    write_jsonl(folder / "validation.jsonl", ENTRIES[:6])
    write_jsonl(tmp_path / "plain.jsonl", korean_docs(12))
    return folder


def _module(stage_dir, **kw):
    return MedKorDataModule(
        data_dir=str(stage_dir), tokenizer_path=str(DEMO / "tokenizer-extended"), format="dictionary",
        loss_on="completion", max_length=64, batch_size=4,
        val_sets={"plain": {"path": str(stage_dir.parent / "plain.jsonl")},
                  "dict_all": {"path": str(stage_dir), "format": "dictionary", "loss_on": "all"}}, **kw)


def test_each_set_has_its_cache_format_and_metric_name(stage_dir):
    dm = _module(stage_dir)
    results = {r.split: r for r in dm.prepare_caches()}
    assert set(results) == {"train", "validation", "val-plain", "val-dict_all"}
    assert results["val-plain"].manifest["inputs"]["params"]["format"] == "text"
    # the same records, learned wholly or from the definition on: the key and the labels differ
    assert results["val-dict_all"].key != results["validation"].key
    assert results["val-dict_all"].manifest["learned_tokens"] > results["validation"].manifest["learned_tokens"]
    dm.setup("fit")
    assert dm.metric_names("val") == ["val/loss", "val/plain/loss", "val/dict_all/loss"]
    loaders = dm.val_dataloader()
    assert len(loaders) == 3
    tokens = [sum(int(b["attention_mask"].sum()) for b in loader) for loader in loaders]
    assert tokens == [results[s].tokens for s in ("validation", "val-plain", "val-dict_all")]


def test_validate_logs_every_set_by_name(stage_dir, tmp_path):
    from medkor.model import MedGemmaModule

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second thread only contends on a busy machine
    model = MedGemmaModule(model_name_or_path=str(DEMO / "tiny-gemma3"), tokenizer_path=str(DEMO / "tokenizer-extended"),
                           torch_dtype="float32")
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    try:
        per_loader = trainer.validate(model, datamodule=_module(stage_dir), verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert [set(m) for m in per_loader] == [{"val/loss"}, {"val/plain/loss"}, {"val/dict_all/loss"}]
    metrics = {k: v for m in per_loader for k, v in m.items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@pytest.mark.parametrize(
    "val_sets, expected",
    [
        ({"bad name": {"path": "x.jsonl"}}, "name must be letters"),
        ({"plain": {"file": "x.jsonl"}}, r"data.val_sets.plain: expected \{path"),
        ({"plain": {"path": "missing.jsonl"}}, "missing.jsonl does not exist"),
        ({"plain": {"path": "PLAIN", "format": "poem"}}, "format 'poem' is not supported"),
        ({"plain": {"path": "PLAIN", "text_feild": "body"}}, "unknown key.*text_feild"),
    ],
)
def test_bad_val_sets_name_the_entry(stage_dir, val_sets, expected):
    plain = str(stage_dir.parent / "plain.jsonl")
    val_sets = {name: {k: (plain if v == "PLAIN" else v) for k, v in entry.items()} for name, entry in val_sets.items()}
    with pytest.raises(DataError, match=expected):
        MedKorDataModule(data_dir=str(stage_dir), val_sets=val_sets)
