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
letter A-E); anything else is a :class:`QuestionError` naming the file, line or row, and field. A file
that is not UTF-8, not valid CSV or not readable Parquet is one error naming the file (and the line or
byte offset). A subset with no questions is an error naming its files. The same question found twice in
a subset (:func:`question_key`) is kept once, and :class:`QuestionSet` says which copies were dropped;
two copies with different answers are an error naming both.
"""

from __future__ import annotations

import codecs
import csv
import json
import unicodedata
from dataclasses import dataclass, field, replace
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
    """Yield ``(where, record)`` from a JSONL, CSV or Parquet file; ``where`` is ``file:line`` or ``file row N``.

    A file that cannot be decoded or parsed as its type is a :class:`QuestionError` naming it.
    """
    if not path.is_file():
        raise QuestionError(f"{path}: no such file")
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl_records, ".csv": _csv_records, ".parquet": _parquet_records}
    if suffix not in readers:
        raise QuestionError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(EXTENSIONS)}")
    try:
        yield from readers[suffix](path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except OSError as error:  # permissions, a vanished file, an I/O error of the disk
        raise QuestionError(f"{path}: cannot read the file ({error.strerror or error}); check it and its permissions") from None


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark some editors write is skipped
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise QuestionError(f"{path}:{number}: not valid JSON ({error.msg}); one object per line") from None


def _csv_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                # line_num is the reader's position after the row: right for multi-line cells too
                yield f"{path}:{reader.line_num}", dict(row)
        except csv.Error as error:
            raise QuestionError(
                f"{path}:{reader.line_num + 1}: not valid CSV ({error}); check the quoting of that line"
            ) from None


def _parquet_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as error:  # truncated, not Parquet, a damaged page
        detail = " ".join(str(error).split())
        raise QuestionError(
            f"{path}: not a readable Parquet file ({detail}); download or export it again "
            "(a complete file ends with the bytes PAR1)"
        ) from None
    for number, row in enumerate(rows):
        yield f"{path} row {number}", row


def _not_utf8(path: Path) -> QuestionError:
    """Where a text file stops being UTF-8 (line and byte offset), and what it probably is instead."""
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        data[start:].decode("utf-8")
        offset = start  # not reached for UTF-8 (its decoder fails where the line reader did); a safe default
    except UnicodeDecodeError as error:
        offset = start + error.start
    line = data.count(b"\n", 0, offset) + 1
    guess = ""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        guess, source = "; it starts like UTF-16", "UTF-16"
    else:
        try:  # from the line that fails: a file may have been appended to in another encoding
            data[data.rfind(b"\n", 0, offset) + 1 :].decode("cp949")
            guess, source = "; it reads as CP949/EUC-KR", "CP949"
        except UnicodeDecodeError:
            source = "ENCODING"
    byte = f"byte 0x{data[offset]:02x} at byte offset {offset}" if offset < len(data) else f"byte offset {offset}"
    return QuestionError(
        f"{path}:{line}: not UTF-8 text ({byte}{guess}); "
        f"save it as UTF-8, e.g. iconv -f {source} -t UTF-8 {path.name} > utf8-{path.name}"
    )


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


def question_key(question: Question) -> tuple[str, str, tuple[str, ...]]:
    """What makes two records the same question: the subset, the question text and the five option
    texts, each compared in Unicode NFC with runs of whitespace as one space (so a copy saved by another
    editor, or with a trailing space, is still a copy). The answer is not part of it: two copies that
    disagree on the answer are an error, not two questions."""

    def norm(text: str) -> str:
        return " ".join(unicodedata.normalize("NFC", text).split())

    return question.subset, norm(question.question), tuple(norm(option) for option in question.options)


@dataclass(frozen=True)
class Repeat:
    """A question found more than once in its subset: the first copy is kept, the later ones dropped."""

    kept: Question
    dropped: tuple[Question, ...]


@dataclass
class QuestionSet:
    """The questions of an evaluation, by subset, and what loading them found.

    Attributes:
        questions: subset -> questions in source order, each question once.
        repeats: subset -> questions that appeared more than once among those kept (dropped copies named).
        files: subset -> the files (or hub config) its questions were read from.
    """

    questions: dict[str, list[Question]]
    repeats: dict[str, list[Repeat]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)

    def dropped(self) -> dict[str, int]:
        """subset -> copies dropped (every subset present)."""
        return {subset: sum(len(r.dropped) for r in self.repeats.get(subset, [])) for subset in self.questions}

    def counts(self) -> dict[str, dict[str, Any]]:
        """subset -> {count, duplicates_dropped, files}: what the summary records about the set."""
        dropped = self.dropped()
        return {
            subset: {"count": len(items), "duplicates_dropped": dropped[subset], "files": list(self.files.get(subset, []))}
            for subset, items in self.questions.items()
        }

    def repeats_line(self, shown: int = 5) -> Optional[str]:
        """One line naming the copies that were dropped (``file:line`` of each), or None when there are none."""
        repeats = [r for subset in self.questions for r in self.repeats.get(subset, [])]
        if not repeats:
            return None
        total = sum(len(r.dropped) for r in repeats)
        parts = [f"{r.kept.where} again at {', '.join(_where_beside(c.where, r.kept.where) for c in r.dropped)}"
                 for r in repeats[:shown]]
        if len(repeats) > shown:
            parts.append(f"and {len(repeats) - shown} more")
        per_subset = ", ".join(f"{subset} {n}" for subset, n in self.dropped().items() if n)
        return (f"KorMedMCQA: {total} repeated question(s) counted once ({per_subset}; same subset, question and "
                f"options): {'; '.join(parts)}")


def _where_beside(where: str, other: str) -> str:
    """``where`` without the file name when it is the same file as ``other`` (``:7``, ``row 7``)."""
    for separator in (" row ", ":"):
        head, _, tail = where.rpartition(separator)
        if head and tail.isdigit() and other.rpartition(separator)[0] == head:
            return f":{tail}" if separator == ":" else f"row {tail}"
    return where


def drop_repeats(questions: Sequence[Question]) -> tuple[list[Question], list[Repeat]]:
    """Each question once (its first copy, its index kept) and the repeats found.

    Two copies with different answers are a :class:`QuestionError` naming both.
    """
    first: dict[tuple[str, str, tuple[str, ...]], Question] = {}
    copies: dict[tuple[str, str, tuple[str, ...]], list[Question]] = {}
    kept = []
    for question in questions:
        key = question_key(question)
        original = first.get(key)
        if original is None:
            first[key] = question
            kept.append(question)
            continue
        if original.answer != question.answer:
            raise QuestionError(
                f"{original.where} and {question.where}: the same {question.subset} question with different answers "
                f"({original.answer} and {question.answer}); correct the wrong copy or remove one of them"
            )
        copies.setdefault(key, []).append(question)
    repeats = [Repeat(first[key], tuple(dropped)) for key, dropped in copies.items()]
    return kept, repeats


def _empty_subset(subset: str, split: str, files: Sequence[str], source: str | Path) -> QuestionError:
    where = ", ".join(files) if files else str(source)
    return QuestionError(
        f"{where}: no questions for subset {subset!r} (split {split!r}); fill the file, or score only the other "
        "subsets by listing them in the subsets option (KorMedMCQAEval init_args.subsets; data.eval_subsets for "
        "the leak check)"
    )


def load_question_set(
    source: str | Path = HUB_ID,
    subsets: Optional[Sequence[str]] = None,
    split: str = "test",
    max_samples: Optional[int] = None,
) -> QuestionSet:
    """Load and validate KorMedMCQA questions, by subset, in source order, each question once.

    Args:
        source: hub id or local folder/file (see the module docstring for the layouts).
        subsets: subsets to load; each must have at least one question. Default: all four (each must
            have questions), or for a single file (or a folder's ``<split>`` file with a ``subject``
            column) the subsets it holds.
        split: split to read (``test``, ``dev``, ``train``, ``fewshot``); ignored for a single file.
        max_samples: keep only the first ``max_samples`` questions of each subset (after repeats are dropped).
    """
    requested = subsets
    subsets = list(SUBSETS if subsets is None else subsets)
    unknown = [subset for subset in subsets if subset not in SUBSETS]
    if unknown or not subsets:
        raise QuestionError(f"unknown subset(s) {unknown or subsets}; choose from {', '.join(SUBSETS)}")
    if max_samples is not None and max_samples < 1:
        raise QuestionError(f"max_samples must be a positive number or None, got {max_samples}")
    path = Path(source).expanduser()
    one_file: Optional[Path] = None  # a file whose subsets are those it holds (when none are requested)
    files: dict[str, list[str]] = {}
    if path.is_dir():
        by_subset: dict[str, list[Question]] = {}
        one_file = _find_split_file(path, split)
        if one_file is not None:
            by_subset = _questions_from_file(one_file, subsets, fallback_subset=None)
        else:
            for subset in subsets:
                subset_paths, tried = subset_files(path, subset, split)
                if not subset_paths:
                    raise QuestionError(
                        f"{path}: no file for subset {subset!r}, split {split!r}; tried {', '.join(tried)} and "
                        f"{split}.* with a subject column (* = {', '.join(e.lstrip('.') for e in EXTENSIONS)})"
                    )
                questions: list[Question] = []
                for file in subset_paths:  # shards of one split: indices run on across them
                    part = _questions_from_file(file, [subset], None, forced_subset=subset)[subset]
                    offset = len(questions)
                    questions.extend([replace(q, index=offset + i) for i, q in enumerate(part)])
                by_subset[subset] = questions
                files[subset] = [str(file) for file in subset_paths]
    elif path.is_file():
        one_file = path
        by_subset = _questions_from_file(path, subsets, fallback_subset=_subset_named_by(path))
    elif str(source).count("/") == 1 and not str(source).startswith((".", "/", "~")) and path.suffix == "":
        by_subset = _questions_from_hub(str(source), subsets, split)
        files = {subset: [f"{source}[{subset}/{split}]"] for subset in subsets}
    else:
        raise QuestionError(f"{source}: no such file or folder (and not a hub id like {HUB_ID})")
    if one_file is not None:
        files = {subset: [str(one_file)] for subset in subsets}
        if requested is None:  # a file holding some subsets only: evaluate those it holds
            held = [subset for subset in subsets if by_subset.get(subset)]
            if not held:
                raise QuestionError(
                    f"{one_file}: no questions (split {split!r}); fill the file with records of the hub schema "
                    "(question, A-E, answer, and subject or a subset in the file name)"
                )
            subsets = held
    out = QuestionSet({}, {}, {subset: files.get(subset, []) for subset in subsets})
    for subset in subsets:
        if not by_subset.get(subset):
            raise _empty_subset(subset, split, files.get(subset, []), source)
        kept, repeats = drop_repeats(by_subset[subset])
        if max_samples is not None:
            kept = kept[:max_samples]
            evaluated = {id(q) for q in kept}
            repeats = [r for r in repeats if id(r.kept) in evaluated]
        out.questions[subset] = kept
        if repeats:
            out.repeats[subset] = repeats
    return out


def load_questions(
    source: str | Path = HUB_ID,
    subsets: Optional[Sequence[str]] = None,
    split: str = "test",
    max_samples: Optional[int] = None,
) -> dict[str, list[Question]]:
    """The questions of :func:`load_question_set`, by subset (each question once)."""
    return load_question_set(source, subsets, split, max_samples).questions
