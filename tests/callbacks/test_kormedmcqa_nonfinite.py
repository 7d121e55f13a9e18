"""KorMedMCQAEval on a model with non-finite logits: no accuracy, a count, one line, null in the summary."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from medkor.callbacks import KorMedMCQAEval
from tests.callbacks.test_callback_kormedmcqa import TinyModule, csv_rows, loader, read_jsonl, trainer


def poison(module):
    with torch.no_grad():  # the final norm feeds every logit: all of them become NaN
        module.model.model.norm.weight.fill_(float("nan"))


def test_nan_logits_log_no_accuracy_but_a_count_and_a_line(tmp_path, tokenizer, sample_dir, caplog):
    module = TinyModule(tokenizer)
    poison(module)
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, 1, [KorMedMCQAEval(source=str(sample_dir), batch_size=4)]).fit(module, loader(tokenizer))
    run = tmp_path / "run" / "version_0"

    rows = csv_rows(run / "metrics.csv")
    assert not any(v for r in rows for k, v in r.items() if k.endswith("/acc")), "an accuracy was logged"
    assert {int(r["step"]): float(r["kormedmcqa/nonfinite"]) for r in rows if r.get("kormedmcqa/nonfinite")} == {0: 15, 2: 15}
    lines = [r.getMessage() for r in caplog.records if "non-finite logits" in r.getMessage()]
    assert lines == [
        f"[medkor] KorMedMCQA at step {s}: 15 of 15 questions have non-finite logits; no accuracy reported - "
        "the model has diverged (see NonFiniteGuard / lower the learning rate)"
        for s in (0, 2)
    ]

    records = read_jsonl(run / "kormedmcqa" / "fit-epoch000-step0000002.jsonl")
    assert len(records) == 15
    assert all(r["pred"] is None and r["correct"] is False and r["finite"] is False for r in records)
    summary = json.loads((run / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))
    for entry in (summary["baseline"], summary["latest"]):
        assert entry["acc"] is None and entry["nonfinite"] == 15 and entry["correct"] == 0 and entry["total"] == 15
        assert {s: (v["acc"], v["nonfinite"]) for s, v in entry["subsets"].items()} == {
            "doctor": (None, 5), "nurse": (None, 4), "pharm": (None, 3), "dentist": (None, 3)
        }
    assert summary["latest"]["change"] is None

    from medkor.commands.plot import main

    assert main([str(run), "--out", str(tmp_path / "p.png")]) == 0  # losses only, the diverged evaluations marked


def test_a_run_that_diverges_reports_its_finite_baseline_then_no_accuracy(tmp_path, tokenizer, sample_dir):
    module = TinyModule(tokenizer)
    callback = KorMedMCQAEval(source=str(sample_dir), subsets=["nurse", "pharm"], batch_size=4)
    run = trainer(tmp_path, 1, [callback])
    run.fit(module, loader(tokenizer))
    assert callback.baseline["nonfinite"] == 0 and callback.baseline["acc"] is not None
    rows = csv_rows(tmp_path / "run" / "version_0" / "metrics.csv")
    assert [float(r["kormedmcqa/nonfinite"]) for r in rows if r.get("kormedmcqa/nonfinite")] == [0.0, 0.0]

    poison(module)
    (validated,) = run.validate(module, loader(tokenizer))
    assert validated["kormedmcqa/nonfinite"] == 7
    assert not [k for k in validated if k.endswith("/acc")]
    summary = json.loads((tmp_path / "run" / "version_0" / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))
    assert summary["baseline"]["acc"] == pytest.approx(callback.baseline["acc"])
    assert summary["latest"]["stage"] == "validate" and summary["latest"]["acc"] is None
    assert summary["latest"]["nonfinite"] == 7 and summary["latest"]["change"] is None
