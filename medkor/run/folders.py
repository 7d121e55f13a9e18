"""Run folders (`<root>/version_N`): claimed atomically, found again from a checkpoint, history kept on resume.

Lightning's loggers pick `version_N` by listing the folder when first asked, so two
runs started together can pick the same one. Here the folder is created with
`mkdir`, which only one process can win; the loggers are then pointed at it. A run
resumed from a checkpoint inside `<root>/version_N/checkpoints/` continues in
`version_N`: its metrics keep the rows up to the checkpoint's step and go on from there.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Optional

from medkor.run.atomic import atomic_write_text

VERSION = re.compile(r"^version_(\d+)$")
LAST = re.compile(r"^last(-v?\d+)?(\.ckpt)?$")


def versions(root: Path) -> list[int]:
    """The N of every `version_N` folder under `root`, ascending."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := VERSION.match(p.name)))


def claim_version(root: Path) -> int:
    """Create the next free `root/version_N` and return N; concurrent callers never get the same N."""
    root.mkdir(parents=True, exist_ok=True)
    n = (versions(root) or [-1])[-1] + 1
    while True:
        try:
            (root / f"version_{n}").mkdir()
            return n
        except FileExistsError:
            n += 1


def version_of_checkpoint(checkpoint: Path, root: Path) -> Optional[int]:
    """N when `checkpoint` lies in `root/version_N/checkpoints/`, else None.

    Compared as written (made absolute, links not followed), so a `checkpoints/` that
    links to other storage still belongs to its run; then with links resolved, so a
    path through a link to the root is recognised too.
    """
    for resolve in (False, True):
        folder = (checkpoint.resolve() if resolve else Path(os.path.abspath(checkpoint))).parent
        base = root.resolve() if resolve else Path(os.path.abspath(root))
        match = VERSION.match(folder.parent.name)
        if folder.name == "checkpoints" and folder.parent.parent == base and match:
            return int(match.group(1))
    return None


def find_last_checkpoint(root: Path) -> Optional[Path]:
    """The newest `last*.ckpt` (a file, or a folder of a sharded checkpoint) of any run under `root`."""
    candidates = [
        path
        for n in versions(root)
        if (folder := root / f"version_{n}" / "checkpoints").is_dir()
        for path in folder.iterdir()
        if LAST.match(path.name) and not path.name.startswith(".")
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def _step(row: dict[str, str]) -> Optional[int]:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def logged_before(row: dict[str, str], step: int) -> bool:
    """Whether a metrics row was logged before a checkpoint taken at global step `step`.

    Lightning logs a batch's training row (and validation) at the global step before
    that batch's optimizer step, so rows of steps below `step` came first; at `step`
    itself only the evaluations that ran before the save (KorMedMCQA after the epoch or
    every N steps: it runs before the checkpoint callbacks) did.
    """
    logged = _step(row)
    if logged is None or logged < step:
        return True
    return logged == step and not any(v for k, v in row.items() if k.startswith(("train/", "val/")))


def trim_metrics(path: Path, last_step: Optional[int]) -> tuple[list[str], int]:
    """Drop the rows of `path` (a metrics.csv) logged after a checkpoint at `last_step`; return (header, dropped).

    Those rows come from the attempt that was killed after the checkpoint; the resumed
    run logs the same steps again. Every row is kept when `last_step` is None. The
    header is left sorted, as Lightning's CSV logger appends rows in sorted column order.
    """
    if not path.is_file():
        return [], 0
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    kept = [row for row in rows if last_step is None or logged_before(row, last_step)]
    if len(kept) != len(rows) or header != sorted(header):
        header = sorted(header)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, text.getvalue(), what="metrics file")
    return header, len(rows) - len(kept)


# what a run folder holds before anything worth keeping is written
_START_FILES = re.compile(r"^(config\.yaml|hparams\.yaml|metrics\.csv|events\.out\.tfevents\..*)$")


def discard_if_unused(folder: Path) -> bool:
    """Remove a run folder that a failed start left with nothing in it worth keeping; True if removed.

    Worth keeping: any checkpoint, any KorMedMCQA file, any metrics row, any file medkor
    does not know. Only the start-up files (config, hparams, an empty metrics.csv, a
    TensorBoard file of a run whose metrics.csv is empty) and empty folders are ever removed.
    """
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    for path in files:
        if path.parent != folder or not _START_FILES.match(path.name):
            return False
        if path.name == "metrics.csv" and len(path.read_text(encoding="utf-8", errors="replace").splitlines()) > 1:
            return False
    for path in files:
        path.unlink()
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        path.rmdir()
    folder.rmdir()
    return True
