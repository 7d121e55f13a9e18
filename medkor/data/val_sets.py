"""Named validation sets: `val_sets: {name: {path, format, ...}}` checked into files and a format.

Each set is logged as `val/<name>/loss`, so a stage can watch the loss of an earlier
stage's data (plain text while the dictionary trains) besides its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from medkor.data.formats import FormatSpec
from medkor.data.sources import DataError, split_files

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPEC_KEYS = tuple(f.name for f in fields(FormatSpec))


@dataclass(frozen=True)
class ValSet:
    """One named validation set: its files, how they are read, how many records are kept."""

    name: str
    files: list[Path]
    spec: FormatSpec
    max_samples: Optional[int] = None

    @property
    def split(self) -> str:
        """The cache's split name (folder `val-<name>-<key>`)."""
        return f"val-{self.name}"


def set_files(path: Path, where: str) -> list[Path]:
    """A JSONL file, or a folder's `validation*.jsonl` files."""
    if path.is_file():
        return [path]
    if path.is_dir():
        found = split_files(path, "validation")
        if not found:
            raise DataError(f"{where}: {path} holds no validation.jsonl (or validation-*.jsonl); point path at a JSONL file")
        return found
    raise DataError(f"{where}: {path} does not exist; point path at a JSONL file or a folder with validation.jsonl")


def parse_val_sets(val_sets: Optional[Mapping[str, Any]], base: FormatSpec) -> list[ValSet]:
    """Check `data.val_sets`; a set's format options default to `text` with the stage's field names."""
    if not val_sets:
        return []
    if not isinstance(val_sets, Mapping):
        raise DataError(f"data.val_sets must map names to {{path, format, ...}}, got {type(val_sets).__name__}")
    out = []
    for name, entry in val_sets.items():
        where = f"data.val_sets.{name}"
        if not isinstance(name, str) or not NAME.match(name):
            raise DataError(f"{where}: a set's name must be letters, digits, '_', '-' or '.' (it names a metric and a folder)")
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, Mapping) or "path" not in entry:
            raise DataError(f"{where}: expected {{path: FILE_OR_FOLDER, format: ...}}, got {entry!r}")
        unknown = sorted(set(entry) - {"path", "max_samples", *SPEC_KEYS})
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; use path, max_samples, {', '.join(SPEC_KEYS)}")
        spec, limit = _spec_and_limit(entry, base, where)
        out.append(ValSet(name, set_files(Path(entry["path"]), where), spec, limit))
    return out


def _spec_and_limit(entry: Mapping[str, Any], base: FormatSpec, where: str) -> tuple[FormatSpec, Optional[int]]:
    """The format of a further source (`text` in the stage's text field unless it says otherwise) and its max_samples."""
    options = {key: entry[key] for key in SPEC_KEYS if key in entry}
    try:
        spec = replace(FormatSpec(**{"format": "text", "text_field": base.text_field}), **options)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: {err}") from None
    limit = entry.get("max_samples")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(f"{where}.max_samples must be a positive integer, got {limit!r}")
    return spec, limit


REPLAY_MODES = ("fixed", "metric")


@dataclass(frozen=True)
class ReplaySource:
    """An earlier stage's training data mixed into this stage's training order."""

    files: list[Path]
    spec: FormatSpec
    ratio: float
    mode: str  # fixed: on from the start; metric: off until ForgettingGuard turns it on
    max_samples: Optional[int] = None


def parse_replay(replay: Optional[Mapping[str, Any]], base: FormatSpec) -> Optional[ReplaySource]:
    """Check `data.replay: {path, format, <format options>, ratio, mode, max_samples}`."""
    if not replay:
        return None
    where = "data.replay"
    if not isinstance(replay, Mapping) or "path" not in replay:
        raise DataError(f"{where}: expected {{path: FILE_OR_FOLDER, format: ..., ratio: 0.2, mode: fixed}}, got {replay!r}")
    unknown = sorted(set(replay) - {"path", "max_samples", "ratio", "mode", *SPEC_KEYS})
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; use path, ratio, mode, max_samples, "
                        f"{', '.join(SPEC_KEYS)}")
    ratio, mode = replay.get("ratio", 0.2), replay.get("mode", "fixed")
    if not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
        raise DataError(f"{where}.ratio must be in (0, 1) (the share of training positions that replay), got {ratio!r}")
    if mode not in REPLAY_MODES:
        raise DataError(f"{where}.mode must be fixed (always on) or metric (switched by ForgettingGuard), got {mode!r}")
    spec, limit = _spec_and_limit(replay, base, where)
    path = Path(replay["path"])
    if path.is_dir():
        files = split_files(path, "train")
        if not files:
            raise DataError(f"{where}: {path} holds no train.jsonl (or train-*.jsonl); point path at a JSONL file")
    else:
        files = set_files(path, where)
    return ReplaySource(files, spec, float(ratio), mode, limit)
