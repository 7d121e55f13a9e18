import json

import pytest

from medkor.eval.predictions import (
    accuracy_metrics,
    count_correct,
    evaluation_entry,
    predictions_filename,
    sort_records,
    write_predictions,
    write_summary,
)


def records():
    rows = [("doctor", 0, True), ("doctor", 1, False), ("nurse", 0, True), ("nurse", 1, True), ("nurse", 2, False)]
    return [{"subset": s, "index": i, "correct": c, "prompt": "정답："} for s, i, c in rows]


def test_counts_and_accuracy_weight_subsets_by_size():
    counts = count_correct(records(), ["doctor", "nurse", "pharm"])
    assert counts == {"doctor": (1, 2), "nurse": (2, 3), "pharm": (0, 0)}
    metrics = accuracy_metrics({"doctor": (1, 2), "nurse": (2, 3)})
    assert metrics == {"kormedmcqa/acc": 0.6, "kormedmcqa/doctor/acc": 0.5, "kormedmcqa/nurse/acc": pytest.approx(2 / 3)}


def test_predictions_file_is_jsonl_in_subset_order(tmp_path):
    name = predictions_filename("fit", 2, 150)
    assert name == "fit-epoch002-step0000150.jsonl"
    shuffled = list(reversed(records()))
    path = write_predictions(tmp_path / "kormedmcqa" / name, sort_records(shuffled, ["nurse", "doctor"]))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [(json.loads(x)["subset"], json.loads(x)["index"]) for x in lines][:3] == [("nurse", 0), ("nurse", 1), ("nurse", 2)]
    assert "정답：" in lines[0]  # Korean kept readable
    assert not list(path.parent.glob(".*tmp*"))


def test_summary_holds_baseline_every_evaluation_and_change(tmp_path):
    baseline = evaluation_entry("baseline", 0, 0, {"doctor": (1, 4), "nurse": (2, 4)}, 1.5, "b.jsonl")
    later = evaluation_entry("fit", 0, 10, {"doctor": (3, 4), "nurse": (2, 4)}, 1.0, "f.jsonl")
    path = write_summary(tmp_path / "summary.json", {"split": "test"}, baseline, [later])
    summary = json.loads(path.read_text(encoding="utf-8"))
    assert summary["baseline"]["acc"] == 3 / 8 and summary["baseline"]["subsets"]["doctor"]["total"] == 4
    assert summary["latest"]["change"]["acc"] == pytest.approx(2 / 8)
    assert summary["latest"]["change"]["subsets"] == {"doctor": 0.5, "nurse": 0.0}
    assert summary["evaluations"][0]["predictions"] == "f.jsonl" and summary["settings"] == {"split": "test"}
