"""Prediction records, accuracy, the per-evaluation predictions file and the run's summary JSON.

Formats are documented in ``docs/kormedmcqa.md``. Files are written to a temporary name and
renamed, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from medkor.eval.encoding import EncodedQuestion
from medkor.eval.generation import extract_choice
from medkor.eval.questions import LETTERS

METRIC_PREFIX = "kormedmcqa"


def _base_record(item: EncodedQuestion) -> dict[str, Any]:
    q = item.question
    return {"subset": q.subset, "index": q.index, "answer": q.answer}


def logprob_records(encoded: Sequence[EncodedQuestion], scores: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """One record per question: ``pred`` is the letter of the highest log-probability (first on ties).

    A question whose five log-probabilities are not all finite (a diverged model) has ``pred``
    ``None``, ``correct`` false and ``finite`` false; it makes the evaluation report no accuracy.
    """
    records = []
    for item, row in zip(encoded, scores, strict=True):
        finite = all(math.isfinite(x) for x in row)
        best = max(range(len(LETTERS)), key=lambda k: (row[k], -k))
        pred = LETTERS[best] if finite else None
        record = _base_record(item)
        record.update(
            pred=pred,
            correct=pred == item.question.answer,
            finite=finite,
            logprobs=dict(zip(LETTERS, (float(x) for x in row))),
            letter_ids=dict(zip(LETTERS, item.letter_ids)),
            prompt=item.prompt,
            prompt_ids=list(item.prompt_ids),
        )
        records.append(record)
    return records


def generate_records(encoded: Sequence[EncodedQuestion], texts: Sequence[str]) -> list[dict[str, Any]]:
    """One record per question: ``pred`` extracted from the generation (``None`` when nothing matched)."""
    records = []
    for item, text in zip(encoded, texts, strict=True):
        pred = extract_choice(text)
        record = _base_record(item)
        record.update(
            pred=pred,
            correct=pred == item.question.answer,
            logprobs=None,
            generation=text,
            prompt=item.prompt,
            prompt_ids=list(item.prompt_ids),
        )
        records.append(record)
    return records


def count_correct(records: Sequence[Mapping[str, Any]], subsets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``subset -> (correct, total)`` over the records (every subset present, zero if empty)."""
    counts = {subset: [0, 0] for subset in subsets}
    for record in records:
        pair = counts[record["subset"]]
        pair[0] += int(bool(record["correct"]))
        pair[1] += 1
    return {subset: (c, t) for subset, (c, t) in counts.items()}


def count_nonfinite(records: Sequence[Mapping[str, Any]], subsets: Sequence[str]) -> dict[str, int]:
    """``subset -> questions whose log-probabilities were not all finite`` (every subset present)."""
    counts = {subset: 0 for subset in subsets}
    for record in records:
        if record.get("finite", True) is False:
            counts[record["subset"]] += 1
    return counts


def accuracy_metrics(counts: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """``kormedmcqa/acc`` (all questions, i.e. subsets weighted by size) and ``kormedmcqa/<subset>/acc``."""
    correct = sum(c for c, _ in counts.values())
    total = sum(t for _, t in counts.values())
    metrics = {f"{METRIC_PREFIX}/acc": correct / total if total else float("nan")}
    for subset, (c, t) in counts.items():
        metrics[f"{METRIC_PREFIX}/{subset}/acc"] = c / t if t else float("nan")
    return metrics


def predictions_filename(stage: str, epoch: int, step: int) -> str:
    """``<stage>-epoch<E>-step<S>.jsonl``; stage is ``baseline``, ``fit``, ``validate`` or ``test``."""
    return f"{stage}-epoch{epoch:03d}-step{step:07d}.jsonl"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def sort_records(records: Sequence[Mapping[str, Any]], subsets: Sequence[str]) -> list[Mapping[str, Any]]:
    """Records in subset order (as configured), then by index."""
    rank = {subset: k for k, subset in enumerate(subsets)}
    return sorted(records, key=lambda r: (rank.get(r["subset"], len(rank)), r["subset"], r["index"]))


def write_predictions(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, Korean kept readable)."""
    path = Path(path)
    _write_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return path


def evaluation_entry(
    stage: str,
    epoch: int,
    step: int,
    counts: Mapping[str, tuple[int, int]],
    seconds: float,
    predictions: Optional[str],
    nonfinite: Optional[Mapping[str, int]] = None,
    duplicates: Optional[Mapping[str, int]] = None,
) -> dict[str, Any]:
    """One evaluation as stored in the summary and the callback's checkpoint state.

    ``nonfinite`` (subset -> questions with non-finite log-probabilities): when any is non-zero,
    every ``acc`` of the entry is ``None`` (no accuracy of a diverged model is reported).
    ``duplicates`` (subset -> repeated copies of a question that were dropped, so each counts once)
    goes in as ``duplicates_dropped``, beside ``total`` (the questions scored).
    """
    metrics = accuracy_metrics(counts)
    nonfinite = {subset: int((nonfinite or {}).get(subset, 0)) for subset in counts}
    dropped = {subset: int((duplicates or {}).get(subset, 0)) for subset in counts}
    diverged = any(nonfinite.values())
    return {
        "stage": stage,
        "epoch": epoch,
        "step": step,
        "acc": None if diverged else metrics[f"{METRIC_PREFIX}/acc"],
        "subsets": {
            subset: {"acc": None if diverged else metrics[f"{METRIC_PREFIX}/{subset}/acc"], "correct": c, "total": t,
                     "nonfinite": nonfinite[subset], "duplicates_dropped": dropped[subset]}
            for subset, (c, t) in counts.items()
        },
        "correct": sum(c for c, _ in counts.values()),
        "total": sum(t for _, t in counts.values()),
        "nonfinite": sum(nonfinite.values()),
        "duplicates_dropped": sum(dropped.values()),
        "seconds": seconds,
        "predictions": predictions,
    }


def with_change(entry: Mapping[str, Any], baseline: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The entry plus ``change`` (accuracy minus the baseline's, overall and per subset).

    ``change`` is ``None`` without a baseline or when either accuracy is ``None`` (non-finite).
    """
    out = dict(entry)
    if baseline is None or entry["acc"] is None or baseline["acc"] is None:
        out["change"] = None
        return out
    per_subset = {
        subset: value["acc"] - baseline["subsets"][subset]["acc"]
        for subset, value in entry["subsets"].items()
        if subset in baseline["subsets"] and baseline["subsets"][subset]["acc"] is not None
    }
    out["change"] = {"acc": entry["acc"] - baseline["acc"], "subsets": per_subset}
    return out


def write_summary(
    path: str | Path,
    settings: Mapping[str, Any],
    baseline: Optional[Mapping[str, Any]],
    evaluations: Sequence[Mapping[str, Any]],
    questions: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write the summary JSON: settings, the question set (``QuestionSet.counts``: per subset the
    questions scored, repeated copies dropped, the files read), baseline, every evaluation with its
    change since the baseline."""
    evaluated = [with_change(entry, baseline) for entry in evaluations]
    summary = {
        "settings": dict(settings),
        "questions": dict(questions) if questions is not None else None,
        "baseline": dict(baseline) if baseline is not None else None,
        "evaluations": evaluated,
        "latest": evaluated[-1] if evaluated else None,
    }
    path = Path(path)
    _write_atomic(path, json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    return path
