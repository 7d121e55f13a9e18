"""Find the JSONL files of a split, read them in chunks of whole lines, check every line.

Errors name the file and line and say what to do; nothing here knows about caches
or tokenizers. A `Selection` says which documents of the files make up a split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np
import xxhash

from medkor.data.formats import FormatSpec, Item, check_record, item_key, item_text

OnBadRecord = Literal["error", "skip"]
SPLIT_FILES = {"train": "train", "validation": "validation"}
CHUNK_BYTES = 1 << 20  # whole lines of about this many bytes per unit of work


class DataError(ValueError):
    """Bad input data: the message names the file (and line) and what to do."""


@dataclass
class Selection:
    """Which documents of the source files make up a split."""

    files: list[Path]
    text_field: str = "text"
    on_bad_record: OnBadRecord = "error"
    max_samples: Optional[int] = None
    val_fraction: float = 0.0  # > 0: the split is carved from the files by a content hash
    take_validation: bool = False  # with val_fraction: keep the validation share, else the rest
    seed: int = 0
    spec: Optional[FormatSpec] = None  # how records are read; None: `text` from `text_field`

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        if self.spec is None:
            self.spec = FormatSpec(text_field=self.text_field)

    def keeps(self, item: Item) -> bool:
        """Whether a checked record belongs to the split (before `max_samples`)."""
        if self.val_fraction <= 0:
            return True
        return in_validation(item_key(item), self.seed, self.val_fraction) == self.take_validation

    def keep_mask(self, draws: Optional[np.ndarray], count: int) -> np.ndarray:
        """`keeps` for `count` documents given their `validation_draw`s (None: not carved, all kept)."""
        if self.val_fraction <= 0:
            return np.ones(count, dtype=bool)
        if draws is None:
            raise ValueError("documents carry no validation draws, but the split is carved by val_fraction")
        return (draws.astype(np.float64) / 2.0**64 < self.val_fraction) == self.take_validation


def validation_draw(text: str, seed: int) -> int:
    """A document's seeded 64-bit draw; it is in validation when draw / 2**64 < val_fraction."""
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"), seed=seed)


def in_validation(text: str, seed: int, fraction: float) -> bool:
    """Deterministic split by content: a document's side never depends on the others."""
    return validation_draw(text, seed) / 2.0**64 < fraction


@dataclass
class ReadStats:
    """Skipped records of a split, by `path:line: reason` (the first few kept as examples)."""

    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    long_skipped: int = 0  # examples longer than max_length, skipped (on_long_example: skip)
    long_examples: list[str] = field(default_factory=list)

    def record_long(self, path: Path, line: int, size: int, limit: int) -> None:
        """Count an example skipped for being longer than `limit` tokens."""
        self.long_skipped += 1
        if len(self.long_examples) < 20:
            self.long_examples.append(f"{path}:{line}: {size} tokens > max_length {limit}")

    def record(self, path: Path, problems: list[tuple[int, str]], on_bad_record: OnBadRecord) -> None:
        """Apply the bad-record policy to a chunk's problems: raise on the first, or count them."""
        for number, problem in problems:
            where = f"{path}:{number}: {problem}"
            if on_bad_record == "error":
                raise DataError(where + " (or skip such lines: --data.on_bad_record skip)")
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


def check_file(path: Path) -> None:
    """Fail early, naming the file, when it is missing or empty."""
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


def read_json_line(raw: bytes) -> tuple[Any, Optional[str], bool]:
    """(record, problem, blank) of one raw line; the problem says what is wrong and what to do."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"bytes that are not UTF-8 at column {err.start + 1}; re-encode the file as UTF-8", False
    if not line.strip():
        return None, None, True
    try:
        # without its line break: the parser would place an error at the line's end on a "line 2, column 1"
        return json.loads(line.rstrip("\r\n")), None, False
    except json.JSONDecodeError as err:
        where = "" if err.msg.endswith(" at") else " at"  # "Unterminated string starting at" names its own place
        return None, f"malformed JSON ({err.msg}{where} column {err.colno}); fix or remove the line", False


def parse_record_line(raw: bytes, spec: FormatSpec, where: str = "") -> tuple[Optional[Item], Optional[str]]:
    """(item, None) for a good line of `spec.format`, (None, problem) for a bad one, (None, None) if blank.

    The problem names the field and what to do; callers prefix `path:line`.
    """
    record, problem, blank = read_json_line(raw)
    if blank or problem:
        return None, problem
    item, problem = check_record(record, spec, where)
    if problem:
        return None, problem
    if b"\\u" in raw and _has_lone_surrogate(item_text(item)):  # type: ignore[arg-type]
        field = f"field {spec.text_field!r}" if spec.format == "text" else "a field"
        return None, (
            f"{field} holds an unpaired surrogate escape (\\ud800-\\udfff), which is not text; fix the line's \\u escapes"
        )
    return item, None


def parse_line(raw: bytes, text_field: str) -> tuple[Optional[str], Optional[str]]:
    """(text, None) for a good `text` line, (None, problem) for a bad one, (None, None) if blank."""
    return parse_record_line(raw, FormatSpec(text_field=text_field))  # type: ignore[return-value]


@dataclass
class LineSpan:
    """Where a chunk of whole lines lies in a file: small enough to send to a worker."""

    path: Path
    offset: int  # bytes
    length: int  # bytes
    first_line: int  # 1-based number of the first line


@dataclass
class LineChunk:
    """Consecutive raw lines of one file; `first_line` is the 1-based number of the first."""

    path: Path
    first_line: int
    lines: list[bytes]


@dataclass
class ParsedChunk:
    """The checked documents of a chunk with their line numbers, and its bad lines."""

    texts: list[Any]  # the checked items (strings for `text`)
    line_numbers: list[int]
    problems: list[tuple[int, str]]  # (line, what is wrong and what to do)


def line_spans(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[LineSpan]:
    """The file cut into spans of whole lines of about `chunk_bytes` each (a longer line is one span)."""
    offset, first = 0, 1
    pending: list[bytes] = []  # read since `offset`, no newline in it yet
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                pending.append(block)
                continue
            size = sum(map(len, pending)) + cut
            yield LineSpan(path, offset, size, first)
            offset, first = offset + size, first + block.count(b"\n", 0, cut)
            pending = [block[cut:]] if cut < len(block) else []
    if pending:
        yield LineSpan(path, offset, sum(map(len, pending)), first)


def read_span(span: LineSpan) -> LineChunk:
    """The lines of a span (split on \\n only, as iterating over the file does)."""
    with open(span.path, "rb") as handle:
        handle.seek(span.offset)
        data = handle.read(span.length)
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return LineChunk(span.path, span.first_line, lines)


def parse_chunk(chunk: LineChunk, spec: FormatSpec | str) -> ParsedChunk:
    """Check every line of a chunk (`parse_record_line`; a string is a `text_field`); blank lines are neither kept nor bad."""
    if isinstance(spec, str):
        spec = FormatSpec(text_field=spec)
    parsed = ParsedChunk([], [], [])
    for number, raw in enumerate(chunk.lines, start=chunk.first_line):
        item, problem = parse_record_line(raw, spec, f"{chunk.path}:{number}")
        if problem is not None:
            parsed.problems.append((number, problem))
        elif item is not None:
            parsed.texts.append(item)
            parsed.line_numbers.append(number)
    return parsed


def no_records_error(path: Path) -> DataError:
    return DataError(f"{path}: no usable records (every line was blank or skipped)")
