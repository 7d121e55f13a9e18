"""Find the JSONL files of a split and read their records, validating every line.

Errors name the file and line and say what to do; nothing here knows about caches
or tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional

OnBadRecord = Literal["error", "skip"]
SPLIT_FILES = {"train": "train", "validation": "validation"}


class DataError(ValueError):
    """Bad input data: the message names the file (and line) and what to do."""


@dataclass
class ReadStats:
    """What reading a split saw: kept documents and skipped records by reason."""

    documents: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)  # "file:line: reason", first few

    def skip(self, where: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 20:
            self.skipped_examples.append(where)


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The JSONL files of `split` in `data_dir`, in a stable order.

    A split is `<split>.jsonl`, or several files `<split>-*.jsonl` / `<split>_*.jsonl`,
    or every `*.jsonl` in a `<split>/` folder. An empty list means the split is absent.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: data_dir does not exist or is not a folder; point data_dir at the folder holding train.jsonl")
    found: list[Path] = []
    single = root / f"{split}.jsonl"
    if single.is_file():
        found.append(single)
    for pattern in (f"{split}-*.jsonl", f"{split}_*.jsonl"):
        found.extend(sorted(p for p in root.glob(pattern) if p.is_file()))
    sub = root / split
    if sub.is_dir():
        found.extend(sorted(p for p in sub.glob("*.jsonl") if p.is_file()))
    return found


def require_train_files(data_dir: str | Path) -> list[Path]:
    """The training files, or a clear error when `data_dir` holds none."""
    files = split_files(data_dir, "train")
    if not files:
        listing = sorted(p.name for p in Path(data_dir).iterdir())[:10]
        raise DataError(
            f"{data_dir}: no training data (expected train.jsonl, train-*.jsonl or train/*.jsonl; "
            f"found {listing or 'an empty folder'})"
        )
    return files


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; remove it or fill it with one JSON object per line")


def _has_lone_surrogate(text: str) -> bool:
    """True when JSON `\\u` escapes left a surrogate that no UTF-8 text can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_line(raw: bytes, text_field: str) -> tuple[Optional[str], Optional[str]]:
    """(text, None) for a good JSONL line, (None, problem) for a bad one, (None, None) if blank.

    The problem says what is wrong and what to do; callers prefix `path:line`.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"bytes that are not UTF-8 at column {err.start + 1}; re-encode the file as UTF-8"
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"malformed JSON ({err.msg} at column {err.colno}); fix or remove the line"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if text_field not in record:
        keys = ", ".join(sorted(record)[:8])
        return None, f"missing field {text_field!r} (fields: {keys}); set text_field to the right one"
    text = record[text_field]
    if not isinstance(text, str):
        return None, f"field {text_field!r} is {type(text).__name__}, not a string"
    if not text.strip():
        return None, f"field {text_field!r} is empty"
    if "\\u" in line and _has_lone_surrogate(text):
        return None, (
            f"field {text_field!r} holds an unpaired surrogate escape (\\ud800-\\udfff), "
            "which is not text; fix the line's \\u escapes"
        )
    return text, None


def read_texts(
    path: Path,
    text_field: str = "text",
    on_bad_record: OnBadRecord = "error",
    stats: Optional[ReadStats] = None,
) -> Iterator[str]:
    """Yield the `text_field` string of every record of one JSONL file.

    Blank lines are ignored. A line that is not UTF-8, not JSON, not an object, or
    lacks a non-empty string `text_field` raises `DataError` naming `path:line`, or is
    counted in `stats` and skipped when `on_bad_record="skip"`.
    """
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    _check_file(path)
    stats = stats if stats is not None else ReadStats()
    kept = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text, problem = parse_line(raw, text_field)
            if text is None and problem is None:
                continue  # blank line
            if problem is not None:
                where = f"{path}:{number}: {problem}"
                if on_bad_record == "error":
                    raise DataError(where + " (or set on_bad_record: skip)")
                stats.skip(where)
                continue
            kept += 1
            stats.documents += 1
            yield text
    if kept == 0:
        raise DataError(f"{path}: no usable records (every line was blank or skipped)")
