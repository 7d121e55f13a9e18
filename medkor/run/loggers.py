"""Point a run's loggers at its `version_N` folder, and continue a folder's history on resume.

Duck-typed over Lightning's `CSVLogger` and `TensorBoardLogger` (anything with
`root_dir` and `_version`); other loggers are left as they are.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from medkor.run.folders import claim_version, trim_metrics

METRICS = "metrics.csv"


def versioned_groups(loggers: Sequence[Any]) -> dict[Path, list[Any]]:
    """Loggers that write into `<root_dir>/version_N`, grouped by root (one run folder per root)."""
    groups: dict[Path, list[Any]] = defaultdict(list)
    for logger in loggers:
        if hasattr(logger, "_version") and getattr(logger, "root_dir", None):
            groups[Path(logger.root_dir)].append(logger)
    return groups


def assign_versions(loggers: Sequence[Any], keep: Optional[tuple[Path, int]] = None) -> dict[Path, int]:
    """Give every group of loggers its folder: `keep=(root, N)` reuses `root/version_N`, the rest are claimed.

    A logger configured with an explicit `version` keeps it. Call on global rank zero only.
    """
    chosen = {}
    for root, group in versioned_groups(loggers).items():
        fixed = [lg._version for lg in group if lg._version is not None]
        if fixed:
            n = fixed[0]
        elif keep is not None and keep[0].resolve() == root.resolve():
            n = keep[1]
        else:
            n = claim_version(root)
        for logger in group:
            logger._version = n
        chosen[root] = n
    return chosen


def continue_history(loggers: Sequence[Any], last_step: Optional[int]) -> int:
    """Make the loggers of a resumed run append to their folder instead of starting it afresh.

    Lightning's CSV logger deletes an existing `metrics.csv`; here its writer is opened
    with the file moved aside, then the rows up to `last_step` are put back. TensorBoard
    drops the events of steps after `last_step` (`purge_step`). Returns the number of
    metrics rows dropped (logged after the checkpoint by the attempt that was killed).
    """
    dropped = 0
    for logger in loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir is None:
            continue
        if type(logger).__name__ == "TensorBoardLogger" and last_step is not None:
            logger._kwargs.setdefault("purge_step", last_step + 1)
        metrics = Path(log_dir) / METRICS
        # (on the class: reading `experiment` on the instance would open the writer, deleting the file)
        if getattr(logger, "_experiment", True) is not None or not metrics.is_file():
            continue
        header, removed = trim_metrics(metrics, last_step)
        dropped += removed
        aside = metrics.with_name(f".{METRICS}.resuming")
        os.replace(metrics, aside)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "... will be deleted": not with the file moved aside
                writer = logger.experiment
        finally:
            os.replace(aside, metrics)
        if hasattr(writer, "metrics_keys"):
            writer.metrics_keys = list(header)
    return dropped


def stage_subfolder(loggers: Sequence[Any], stage: str) -> None:
    """Point versioned loggers at `<name>/<stage>/version_N`, so validate/test runs sit apart from training runs.

    A logger given an explicit `version` is left where it was told to write.
    """
    for logger in loggers:
        name = getattr(logger, "_name", None)
        if hasattr(logger, "_version") and logger._version is None and isinstance(name, str):
            logger._name = f"{name}/{stage}" if name else stage
