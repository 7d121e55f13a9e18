"""KorMedMCQA questions: load the hub dataset or local files in its schema, and validate them.

Accepted sources (``source`` argument of :func:`load_questions`):

* a hub id such as ``sean0042/KorMedMCQA`` (one config per subset, loaded with ``datasets``);
* a folder ``DIR/<subset>/<split>.{jsonl,csv,parquet}`` (the layout of the demo sample), or
  ``DIR/<subset>-<split>.*``, or a hub snapshot's shards ``DIR/<subset>/<split>-*.parquet``
  (read in name order);
* a folder holding ``DIR/<split>.{jsonl,csv,parquet}`` with a ``subject`` column naming each
  record's subset;
* a single ``.jsonl``/``.csv``/``.parquet`` file whose records carry a ``subject`` column naming
  their subset, or whose file name or parent folder names exactly one subset (``nurse.jsonl``,
  ``nurse/test.csv``).

Every record needs ``question``, ``A``..``E`` (non-empty text) and ``answer`` (1-5 with 1 = A, or a
letter A-E); anything else is a :class:`QuestionError` naming the file, line or row, and field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

SUBSETS: tuple[str, ...] = ("doctor", "nurse", "pharm", "dentist")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D", "E")
HUB_ID = "sean0042/KorMedMCQA"
EXTENSIONS: tuple[str, ...] = (".jsonl", ".csv", ".parquet")


class QuestionError(ValueError):
    """A KorMedMCQA source or record that cannot be used; the message names where and why."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Attributes:
        subset: exam the question belongs to (``doctor``, ``nurse``, ``pharm``, ``dentist``).
        index: 0-based position of the record in its subset's split (stable across runs).
        question: question text as stored (prompts strip it).
        options: the five option texts, A to E.
        answer: correct letter, ``A``..``E``.
        cot: worked explanation (filled in the ``fewshot`` split only; may be empty).
        where: human-readable origin of the record, for error messages.
    """

    subset: str
    index: int
    question: str
    options: tuple[str, str, str, str, str]
    answer: str
    cot: str = ""
    where: str = ""


def parse_answer(value: Any, where: str) -> str:
    """The answer letter of a raw ``answer`` field: 1-5 (1 = A) or a letter A-E."""
    if isinstance(value, bool):  # bool is an int subclass; True must not mean "A"
        raise QuestionError(f"{where}: field 'answer' is {value!r}; expected 1-5 or A-E")
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        number = int(value)
        if 1 <= number <= 5:
            return LETTERS[number - 1]
    elif isinstance(value, str):
        text = value.strip()
        if text.upper() in LETTERS:
            return text.upper()
        if text.isdigit() and 1 <= int(text) <= 5:
            return LETTERS[int(text) - 1]
    raise QuestionError(f"{where}: field 'answer' is {value!r}; expected 1-5 (1 = A) or a letter A-E")


def parse_record(record: Any, subset: str, index: int, where: str) -> Question:
    """Validate one raw record of the hub schema and turn it into a :class:`Question`."""
    if not isinstance(record, dict):
        raise QuestionError(f"{where}: expected an object with question, A-E and answer, got {type(record).__name__}")
    missing = [key for key in ("question", *LETTERS, "answer") if key not in record]
    if missing:
        raise QuestionError(
            f"{where}: missing field(s) {', '.join(missing)}; every record needs question, A, B, C, D, E and answer"
        )
    texts = {}
    for key in ("question", *LETTERS):
        value = record[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # CSV/Parquet readers may type a numeric option as a number
        if not isinstance(value, str) or not value.strip():
            raise QuestionError(f"{where}: field {key!r} is empty or not text ({value!r}); fill it in or drop the record")
        texts[key] = value
    cot = record.get("cot") or ""
    return Question(
        subset=subset,
        index=index,
        question=texts["question"],
        options=tuple(texts[letter] for letter in LETTERS),  # type: ignore[arg-type]
        answer=parse_answer(record["answer"], where),
        cot=cot if isinstance(cot, str) else str(cot),
        where=where,
    )


def read_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` from a JSONL, CSV or Parquet file; ``where`` is ``file:line`` or ``file row N``."""
    if not path.is_file():
        raise QuestionError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise QuestionError(f"{path}:{number}: not valid JSON ({error.msg}); one object per line") from None
    elif suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                # line_num is the reader's position after the row: right for multi-line cells too
                yield f"{path}:{reader.line_num}", dict(row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {number}", row
    else:
        raise QuestionError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(EXTENSIONS)}")


def _find_split_file(folder: Path, split: str) -> Optional[Path]:
    found = [folder / f"{split}{ext}" for ext in EXTENSIONS if (folder / f"{split}{ext}").is_file()]
    if len(found) > 1:
        raise QuestionError(f"{folder}: several files for split {split!r} ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def subset_files(folder: Path, subset: str, split: str) -> tuple[list[Path], list[str]]:
    """(files holding `subset`'s `split` in `folder`, the layouts tried), in the order the layouts are tried."""
    tried = [f"{subset}/{split}.*", f"{subset}-{split}.*", f"{subset}/{split}-*.parquet"]
    nested = _find_split_file(folder / subset, split) if (folder / subset).is_dir() else None
    if nested is not None:
        return [nested], tried
    flat = _find_split_file(folder, f"{subset}-{split}")
    if flat is not None:
        return [flat], tried
    shards = sorted((folder / subset).glob(f"{split}-*.parquet")) if (folder / subset).is_dir() else []
    return shards, tried


def _subset_named_by(path: Path) -> Optional[str]:
    """The subset a file's name or parent folder names, if exactly one."""
    for name in (path.stem.lower(), path.parent.name.lower()):
        hits = [subset for subset in SUBSETS if subset in name]
        if len(hits) == 1:
            return hits[0]
    return None


def _questions_from_file(
    path: Path, subsets: Sequence[str], fallback_subset: Optional[str], forced_subset: Optional[str] = None
) -> dict[str, list[Question]]:
    """Group a file's records by subset: ``forced_subset`` (the folder layout says it), else the
    ``subject`` column, else the subset the file name gives."""
    out: dict[str, list[Question]] = {subset: [] for subset in subsets}
    counters: dict[str, int] = {}
    for where, record in read_records(path):
        subject = record.get("subject") if isinstance(record, dict) else None
        subset = subject.strip().lower() if isinstance(subject, str) and subject.strip().lower() in SUBSETS else None
        subset = forced_subset or subset or fallback_subset
        if subset is None:
            raise QuestionError(
                f"{where}: cannot tell the subset of this record: its 'subject' ({subject!r}) is not one of "
                f"{', '.join(SUBSETS)} and the file name names none; name the file after its subset "
                f"(e.g. nurse.jsonl) or use the layout DIR/<subset>/<split>.jsonl"
            )
        index = counters.get(subset, 0)
        counters[subset] = index + 1
        if subset in out:
            out[subset].append(parse_record(record, subset, index, where))
    return out


def _questions_from_hub(hub_id: str, subsets: Sequence[str], split: str) -> dict[str, list[Question]]:
    import datasets

    out: dict[str, list[Question]] = {}
    for subset in subsets:
        try:
            rows: Iterable[dict[str, Any]] = datasets.load_dataset(hub_id, subset, split=split)
        except Exception as error:  # network, unknown id, unknown config: say what was tried
            raise QuestionError(
                f"{hub_id!r} is not a local path and loading it from the hub (config {subset!r}, split {split!r}) "
                f"failed: {error}. Give a local folder DIR/<subset>/<split>.jsonl or check the id and network."
            ) from error
        out[subset] = [parse_record(row, subset, i, f"{hub_id}[{subset}/{split}] row {i}") for i, row in enumerate(rows)]
    return out


def load_questions(
    source: str | Path = HUB_ID,
    subsets: Optional[Sequence[str]] = None,
    split: str = "test",
    max_samples: Optional[int] = None,
) -> dict[str, list[Question]]:
    """Load and validate KorMedMCQA questions, by subset, in source order.

    Args:
        source: hub id or local folder/file (see the module docstring for the layouts).
        subsets: subsets to load; each must have at least one question. Default: all four, or for a
            single file (or a folder's ``<split>`` file) the subsets it holds.
        split: split to read (``test``, ``dev``, ``train``, ``fewshot``); ignored for a single file.
        max_samples: keep only the first ``max_samples`` questions of each subset.
    """
    requested = subsets
    subsets = list(SUBSETS if subsets is None else subsets)
    unknown = [subset for subset in subsets if subset not in SUBSETS]
    if unknown or not subsets:
        raise QuestionError(f"unknown subset(s) {unknown or subsets}; choose from {', '.join(SUBSETS)}")
    if max_samples is not None and max_samples < 1:
        raise QuestionError(f"max_samples must be a positive number or None, got {max_samples}")
    path = Path(source).expanduser()
    if path.is_dir():
        by_subset: dict[str, list[Question]] = {}
        whole = _find_split_file(path, split)
        if whole is not None:
            by_subset = _questions_from_file(whole, subsets, fallback_subset=None)
        else:
            for subset in subsets:
                files, tried = subset_files(path, subset, split)
                if not files:
                    raise QuestionError(
                        f"{path}: no file for subset {subset!r}, split {split!r}; tried {', '.join(tried)} and "
                        f"{split}.* with a subject column (* = {', '.join(e.lstrip('.') for e in EXTENSIONS)})"
                    )
                questions: list[Question] = []
                for file in files:  # shards of one split: indices run on across them
                    part = _questions_from_file(file, [subset], None, forced_subset=subset)[subset]
                    offset = len(questions)
                    questions.extend([replace(q, index=offset + i) for i, q in enumerate(part)])
                by_subset[subset] = questions
    elif path.is_file():
        by_subset = _questions_from_file(path, subsets, fallback_subset=_subset_named_by(path))
    elif str(source).count("/") == 1 and not str(source).startswith((".", "/", "~")) and path.suffix == "":
        by_subset = _questions_from_hub(str(source), subsets, split)
    else:
        raise QuestionError(f"{source}: no such file or folder (and not a hub id like {HUB_ID})")
    if requested is None:  # a file holding some subsets only: evaluate those it holds
        subsets = [subset for subset in subsets if by_subset.get(subset)] or subsets
    for subset in subsets:
        if not by_subset.get(subset):
            raise QuestionError(f"{source}: no questions for subset {subset!r} (split {split!r}); drop it from subsets")
        if max_samples is not None:
            by_subset[subset] = by_subset[subset][:max_samples]
    return {subset: by_subset[subset] for subset in subsets}
