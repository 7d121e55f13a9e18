"""One picture of a run: training/validation losses and KorMedMCQA accuracy over optimizer steps.

Reads the CSV logger's ``metrics.csv`` (finished or still running: rows are read as they are, an
incomplete last line is skipped) and, when present, ``kormedmcqa/summary.json`` for the baseline.
Uses matplotlib's Agg canvas directly, so no display and no global backend switch is needed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional

Series = dict[str, list[tuple[int, float]]]
ACC_PREFIX = "kormedmcqa/"
NONFINITE = "kormedmcqa/nonfinite"


class PlotError(ValueError):
    """A run folder or metrics file that cannot be plotted; the message says what to pass."""


def find_metrics(run: str | Path) -> Path:
    """The ``metrics.csv`` of a run folder (or the file itself)."""
    path = Path(run)
    if path.is_file():
        return path
    if (path / "metrics.csv").is_file():
        return path / "metrics.csv"
    if path.is_dir():
        versions = sorted(path.glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
        hint = f"; the newest run is {versions[-1].parent}" if versions else ""
        raise PlotError(f"{path}: no metrics.csv here (pass a run folder such as lightning_logs/<name>/version_N){hint}")
    raise PlotError(f"{path}: no such run folder or metrics file")


def read_metrics(path: str | Path) -> Series:
    """``column -> [(step, value)]`` for every numeric cell, sorted by step."""
    series: Series = {}
    with Path(path).open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise PlotError(f"{path}: not a Lightning metrics.csv (no 'step' column)")
        for row in reader:
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError):
                continue  # a line being written by a running job
            for key, cell in row.items():
                if key in (None, "step", "epoch") or cell in (None, ""):
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                if math.isfinite(value):
                    series.setdefault(key, []).append((step, value))
    return {key: sorted(points) for key, points in series.items()}


def _baseline(run_dir: Path, accuracy: list[tuple[int, float]]) -> Optional[tuple[int, float]]:
    summary = run_dir / "kormedmcqa" / "summary.json"
    try:
        baseline = json.loads(summary.read_text(encoding="utf-8")).get("baseline")
        if baseline:
            if baseline.get("acc") is None:  # non-finite logits at the baseline: there is no baseline accuracy
                return None
            return int(baseline["step"]), float(baseline["acc"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return accuracy[0] if accuracy else None


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw losses (top) and KorMedMCQA accuracy (bottom) of a run; returns the PNG path.

    Evaluations with non-finite logits (``kormedmcqa/nonfinite`` > 0) have no accuracy; they are
    drawn as red dotted lines at their steps.

    Args:
        run: run folder holding ``metrics.csv`` (or the CSV itself).
        out: PNG to write (default ``<run>/metrics.png``).
    """
    from matplotlib.figure import Figure

    metrics_path = find_metrics(run)
    run_dir = metrics_path.parent
    series = read_metrics(metrics_path)
    losses = {k: v for k, v in series.items() if k.split("/")[-1].endswith("loss") and not k.endswith("_epoch")}
    if not losses:  # fall back to the epoch aggregates when only those were logged
        losses = {k: v for k, v in series.items() if "loss" in k}
    accuracy = {k: v for k, v in series.items() if k.startswith(ACC_PREFIX) and k.endswith("/acc")}
    # evaluations with non-finite logits log no accuracy, only this count: mark them instead of a point
    diverged = [step for step, count in series.get(NONFINITE, []) if count > 0]
    if not losses and not accuracy and not diverged:
        raise PlotError(f"{metrics_path}: no loss or kormedmcqa/*acc columns to plot yet")

    figure = Figure(figsize=(10, 8), constrained_layout=True)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for name, points in sorted(losses.items()):
        steps, values = zip(*points)
        top.plot(steps, values, marker="." if len(points) < 30 else None, label=name)
    top.set_ylabel("loss")
    top.set_title(f"{run_dir}")
    top.grid(alpha=0.3)
    if losses:
        top.legend(fontsize="small")

    overall = accuracy.pop(f"{ACC_PREFIX}acc", [])
    for name, points in sorted(accuracy.items()):
        steps, values = zip(*points)
        bottom.plot(steps, values, marker="o", markersize=3, linewidth=1, alpha=0.7, label=name.split("/")[1])
    if overall:
        steps, values = zip(*overall)
        bottom.plot(steps, values, marker="o", linewidth=2.5, color="black", label="all subsets")
    baseline = _baseline(run_dir, overall)
    if baseline is not None:
        bottom.axhline(baseline[1], color="grey", linestyle="--", linewidth=1)
        bottom.plot([baseline[0]], [baseline[1]], marker="*", markersize=14, color="red", linestyle="none",
                    label=f"baseline {baseline[1]:.3f}")
    for k, step in enumerate(diverged):
        bottom.axvline(step, color="red", linestyle=":", linewidth=1.5,
                       label="non-finite logits (no accuracy)" if k == 0 else None)
    bottom.axhline(0.2, color="lightgrey", linestyle=":", linewidth=1, label="chance (0.2)")
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("KorMedMCQA accuracy")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize="small")

    out_path = Path(out) if out is not None else run_dir / "metrics.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110)
    return out_path
