"""Non-finite log-probabilities: records, counts, summary entries and the plot."""

from __future__ import annotations

import json
import math

import pytest

from medkor.eval.plot import _baseline, plot_run, read_metrics
from medkor.eval.predictions import count_correct, count_nonfinite, evaluation_entry, logprob_records, write_summary
from medkor.eval.encoding import encode_questions
from medkor.eval.questions import load_questions

NAN, INF = float("nan"), float("inf")


def test_a_question_with_any_non_finite_logprob_has_no_prediction(tokenizer, sample_dir):
    questions = [q for items in load_questions(sample_dir, ["doctor"]).values() for q in items][:4]
    encoded = encode_questions(questions, tokenizer, "harness")
    rows = [[-1.0, -2.0, -3.0, -4.0, -5.0], [NAN] * 5, [-1.0, -2.0, -INF, -4.0, -5.0], [-1.0, NAN, -3.0, -4.0, -5.0]]
    records = logprob_records(encoded, rows)
    assert [r["finite"] for r in records] == [True, False, False, False]
    assert records[0]["pred"] == "A" and all(r["pred"] is None and r["correct"] is False for r in records[1:])
    assert math.isnan(records[1]["logprobs"]["A"])  # the values themselves are kept
    assert count_nonfinite(records, ["doctor", "nurse"]) == {"doctor": 3, "nurse": 0}
    assert count_nonfinite([{"subset": "doctor", "correct": True}], ["doctor"]) == {"doctor": 0}  # generate records


def test_entries_with_non_finite_questions_have_no_accuracy_and_no_change(tmp_path):
    counts = {"doctor": (1, 4), "nurse": (2, 4)}
    finite = evaluation_entry("baseline", 0, 0, counts, 1.0, "b.jsonl", nonfinite={"doctor": 0, "nurse": 0})
    assert finite["acc"] == 3 / 8 and finite["nonfinite"] == 0 and finite["subsets"]["nurse"]["nonfinite"] == 0
    assert evaluation_entry("fit", 0, 1, counts, 1.0, None)["nonfinite"] == 0  # default: none

    diverged = evaluation_entry("fit", 0, 10, {"doctor": (0, 4), "nurse": (2, 4)}, 1.0, "f.jsonl", nonfinite={"doctor": 4})
    assert diverged["acc"] is None and diverged["nonfinite"] == 4
    assert diverged["subsets"] == {"doctor": {"acc": None, "correct": 0, "total": 4, "nonfinite": 4, "duplicates_dropped": 0},
                                   "nurse": {"acc": None, "correct": 2, "total": 4, "nonfinite": 0, "duplicates_dropped": 0}}
    later = evaluation_entry("fit", 1, 20, counts, 1.0, "g.jsonl")
    summary = json.loads(write_summary(tmp_path / "s.json", {}, finite, [diverged, later]).read_text(encoding="utf-8"))
    assert summary["evaluations"][0]["acc"] is None and summary["evaluations"][0]["change"] is None
    assert summary["latest"]["change"]["acc"] == pytest.approx(0.0)
    # a non-finite baseline: nothing to compare with
    summary = json.loads(write_summary(tmp_path / "s.json", {}, diverged, [later]).read_text(encoding="utf-8"))
    assert summary["baseline"]["acc"] is None and summary["latest"]["change"] is None
    assert count_correct([], ["doctor"]) == {"doctor": (0, 0)}


def test_plot_marks_non_finite_evaluations_and_takes_no_baseline_from_them(tmp_path):
    run = tmp_path / "run"
    (run / "kormedmcqa").mkdir(parents=True)
    (run / "metrics.csv").write_text(
        "epoch,kormedmcqa/acc,kormedmcqa/nonfinite,kormedmcqa/seconds,step,train/loss\n"
        "0,,12,0.3,0,\n0,,,,0,5.0\n0,,,,1,nan\n0,,12,0.3,2,\n",
        encoding="utf-8",
    )
    (run / "kormedmcqa" / "summary.json").write_text(json.dumps({"baseline": {"step": 0, "acc": None, "nonfinite": 12}}))
    series = read_metrics(run / "metrics.csv")
    assert series["kormedmcqa/nonfinite"] == [(0, 12.0), (2, 12.0)] and series["train/loss"] == [(0, 5.0)]
    assert _baseline(run, [(2, 0.5)]) is None  # not the first later point
    out = plot_run(run)
    assert out.read_bytes()[:4] == b"\x89PNG"
