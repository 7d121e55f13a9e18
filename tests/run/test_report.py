"""The lines a run prints: KorMedMCQA with its change since the baseline, every validation loss."""

from __future__ import annotations

from medkor.eval.predictions import evaluation_entry
from medkor.run.report import evaluation_line, validation_losses


def test_evaluation_line_gives_subsets_with_n_the_change_and_every_validation_loss():
    baseline = evaluation_entry("baseline", 0, 0, {"doctor": (3, 12), "nurse": (6, 12)}, 0.4, "b.jsonl")
    later = evaluation_entry("fit", 1, 48, {"doctor": (6, 12), "nurse": (6, 12)}, 0.3, "f.jsonl")
    losses = validation_losses({"val/plain_text/loss": 7.0, "train/loss": 1.0, "val/loss": 6.5})
    assert list(losses) == ["val/loss", "val/plain_text/loss"]
    line = evaluation_line(later, baseline, losses)
    assert line.startswith("KorMedMCQA (epoch 1, step 48): acc 0.500 (12/24, +0.125 since baseline)")
    assert "doctor 0.500 n=12 (+0.250), nurse 0.500 n=12 (+0.000)" in line
    assert "val/loss 6.5000, val/plain_text/loss 7.0000" in line
    first = evaluation_line(baseline, None)
    assert first.startswith("KorMedMCQA baseline (step 0): acc 0.375 (9/24)") and "since" not in first
