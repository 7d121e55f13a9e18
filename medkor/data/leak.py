"""Evaluation leak: which training records hold KorMedMCQA questions that are scored.

Text is normalised (NFKC, lower case, letters and digits only, so spacing, punctuation
and full-width forms do not hide a copy). A record *holds* a question exactly when
the question's normalised stem is inside the record's normalised text; it *overlaps*
when at least `threshold` of the stem's character n-grams occur in the record (a
reworded or partly copied question). Stems shorter than `n` characters are checked
exactly only.

Records are hashed in batches with numpy (a rolling hash over code points); only
records that share an n-gram with some question are looked at one by one, so a
large plain-text corpus costs one pass. The report is remembered next to the caches
under a key of the files' content, the format, the questions and the settings.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from medkor.data.fingerprint import FingerprintMemo, file_fingerprints, hash_text
from medkor.data.formats import FormatSpec, item_text
from medkor.data.sources import DataError, line_spans, parse_chunk, read_span
from medkor.eval.questions import Question, QuestionError, load_questions
from medkor.run.atomic import atomic_write_text

LEAK_VERSION = 1
_BASE = np.uint64(1_000_003)
_SEPARATOR = 0  # code point between records in a batch; normalised text never holds it


def normalize(text: str) -> str:
    """NFKC, lower case, letters and digits only."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalnum())


def ngram_hashes(codes: np.ndarray, n: int) -> np.ndarray:
    """Rolling hash of every window of `n` code points (uint64 arithmetic wraps, as wanted)."""
    if len(codes) < n:
        return np.zeros(0, dtype=np.uint64)
    width = len(codes) - n + 1
    hashes = np.zeros(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            hashes = hashes * _BASE + codes[k : k + width]
    return hashes


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


@dataclass
class LeakHit:
    """A training record that holds (exact) or overlaps an evaluation question."""

    where: str  # file:line of the training record
    subset: str
    index: int  # the question's index in its subset's split
    question: str  # the question's stem, shortened
    overlap: float  # share of the stem's n-grams found in the record
    exact: bool

    def line(self) -> str:
        kind = "holds" if self.exact else f"overlaps ({self.overlap:.0%} of its {{n}}-grams)"
        return f"{self.where}: {kind} KorMedMCQA {self.subset} question #{self.index}: {self.question!r}"


@dataclass
class LeakReport:
    """Every hit, exact ones first; `records` training records were compared with `questions` questions."""

    records: int = 0
    questions: int = 0
    hits: list[LeakHit] = field(default_factory=list)
    n: int = 13

    @property
    def exact(self) -> list[LeakHit]:
        return [hit for hit in self.hits if hit.exact]

    def lines(self, limit: int = 20) -> list[str]:
        shown = [hit.line().replace("{n}", str(self.n)) for hit in self.hits[:limit]]
        if len(self.hits) > limit:
            shown.append(f"... and {len(self.hits) - limit} more (all of them in the leak report file)")
        return shown


class QuestionIndex:
    """The n-grams of every evaluation question's normalised stem."""

    def __init__(self, questions: Sequence[Question], n: int) -> None:
        self.questions = list(questions)
        self.n = n
        self.stems = [normalize(q.question) for q in self.questions]
        self.grams: list[np.ndarray] = [np.unique(ngram_hashes(_codes(s), n)) for s in self.stems]
        self.owners: dict[int, list[int]] = {}
        for number, grams in enumerate(self.grams):
            for gram in grams.tolist():
                self.owners.setdefault(gram, []).append(number)
        self.sorted = np.array(sorted(self.owners), dtype=np.uint64)
        self.short = [i for i, g in enumerate(self.grams) if len(g) == 0 and self.stems[i]]

    def fingerprint(self) -> str:
        return hash_text(str(self.n), *self.stems)


def _hits(index: QuestionIndex, texts: list[str], wheres: list[str], threshold: float) -> list[LeakHit]:
    norms = [normalize(t) for t in texts]
    joined = "\x00".join(norms)
    codes = _codes(joined)
    hashes = ngram_hashes(codes, index.n)
    out: list[LeakHit] = []
    candidates: dict[int, set[int]] = {}
    if len(hashes) and len(index.sorted):
        separators = np.concatenate([[0], np.cumsum(codes == _SEPARATOR)])
        clean = separators[index.n:] - separators[: len(hashes)] == 0  # windows inside one record
        found = np.flatnonzero(np.isin(hashes, index.sorted) & clean)
        starts = np.concatenate([[0], np.cumsum([len(s) + 1 for s in norms])[:-1]])
        records = np.searchsorted(starts, found, side="right") - 1
        for record, gram in zip(records.tolist(), hashes[found].tolist()):
            candidates.setdefault(record, set()).add(gram)
    for record, grams in candidates.items():
        counts: dict[int, int] = {}
        for gram in grams:
            for number in index.owners[gram]:
                counts[number] = counts.get(number, 0) + 1
        for number, count in counts.items():
            share = count / len(index.grams[number])
            if share >= threshold:
                out.append(_hit(index, number, wheres[record], share, index.stems[number] in norms[record]))
    for number in index.short:  # too short for n-grams: exact matches only
        for record, norm in enumerate(norms):
            if index.stems[number] in norm:
                out.append(_hit(index, number, wheres[record], 1.0, True))
    return out


def _hit(index: QuestionIndex, number: int, where: str, share: float, exact: bool) -> LeakHit:
    question = index.questions[number]
    stem = " ".join(question.question.split())
    return LeakHit(where, question.subset, question.index, stem if len(stem) <= 80 else stem[:77] + "...",
                   round(share, 4), exact)


def scan(files: Iterable[Path], spec: FormatSpec, index: QuestionIndex, threshold: float) -> LeakReport:
    """Compare every checked record of `files` with the questions (bad lines are the build's to report)."""
    report = LeakReport(questions=len(index.questions), n=index.n)
    for path in files:
        for span in line_spans(Path(path)):
            parsed = parse_chunk(read_span(span), spec)
            report.records += len(parsed.texts)
            wheres = [f"{path}:{line}" for line in parsed.line_numbers]
            report.hits += _hits(index, [item_text(item) for item in parsed.texts], wheres, threshold)
    report.hits.sort(key=lambda hit: (not hit.exact, -hit.overlap, hit.where))
    return report


@dataclass
class LeakCheck:
    """What the training data is checked against.

    Attributes:
        source: KorMedMCQA source of the evaluation (`KorMedMCQAEval.source`).
        split: its split (`KorMedMCQAEval.split`).
        subsets: its subsets (default all).
        ngram: characters per n-gram of the overlap measure.
        threshold: share of a question's n-grams in one record that counts as overlap.
    """

    source: str
    split: str = "test"
    subsets: Optional[list[str]] = None
    ngram: int = 13
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.ngram < 4:
            raise ValueError(f"leak_ngram must be at least 4 characters, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"leak_threshold must be in (0, 1], got {self.threshold}")

    def questions(self) -> list[Question]:
        try:
            by_subset = load_questions(self.source, self.subsets, self.split)
        except QuestionError as err:
            raise DataError(f"leak check: {err}") from None
        return [q for questions in by_subset.values() for q in questions]


def evaluated_files(questions: Sequence[Question]) -> set[Path]:
    """The local files the questions were read from (none for a hub dataset)."""
    out = set()
    for question in questions:
        path = question.where.rsplit(":", 1)[0] if ":" in question.where else question.where.split(" row ")[0]
        if Path(path).is_file():
            out.add(Path(path).resolve())
    return out


def refuse_evaluated_files(files: Sequence[Path], questions: Sequence[Question], check: LeakCheck) -> None:
    """Training on the very files the evaluation scores is an error."""
    scored = evaluated_files(questions)
    for path in files:
        if Path(path).resolve() in scored:
            raise DataError(
                f"{path}: this training file is the KorMedMCQA {check.split!r} split the evaluation scores "
                f"({check.source}); train on another split, or set data.allow_eval_overlap: true"
            )


def leak_report(files: Sequence[Path], spec: FormatSpec, check: LeakCheck, cache_dir: Path,
                data_dir: Path, questions: Optional[Sequence[Question]] = None) -> tuple[LeakReport, Path]:
    """The remembered report for these files and questions, or a fresh scan (then remembered)."""
    questions = list(questions) if questions is not None else check.questions()
    index = QuestionIndex(questions, check.ngram)
    cache_dir.mkdir(parents=True, exist_ok=True)
    memo = FingerprintMemo(cache_dir)
    key = hash_text(json.dumps({
        "version": LEAK_VERSION, "files": file_fingerprints(list(files), data_dir, memo), "format": spec.key(),
        "questions": index.fingerprint(), "threshold": check.threshold,
    }, sort_keys=True, ensure_ascii=False))
    try:
        memo.save()
    except OSError:
        pass
    path = cache_dir / f"leak-{key[:20]}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return LeakReport(saved["records"], saved["questions"], [LeakHit(**h) for h in saved["hits"]],
                              saved["n"]), path
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged: scan again
    report = scan(files, spec, index, check.threshold)
    payload = {"records": report.records, "questions": report.questions, "n": report.n,
               "source": check.source, "split": check.split, "hits": [asdict(h) for h in report.hits]}
    try:
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=1), what="leak report")
    except OSError:
        pass  # a read-only cache dir: the report is only not remembered
    return report, path


def describe(report: LeakReport, path: Path) -> list[str]:
    """Lines for a person: a summary, then the hits."""
    head = (
        f"leak check: {report.records:,} training records against {report.questions:,} evaluation questions: "
        f"{len(report.exact)} hold a question, {len(report.hits) - len(report.exact)} overlap"
    )
    return [head + (f" (report: {path})" if report.hits else "")] + report.lines()


def check_sources(sources: Sequence[tuple[Sequence[Path], FormatSpec]], check: LeakCheck, cache_dir: Path,
                  data_dir: Path, allow_evaluated_files: bool, log: Any) -> LeakReport:
    """Every trained source (files, format) against the scored questions: refuse the scored files
    themselves (unless allowed), log each source's report, return them merged."""
    questions = check.questions()
    if not allow_evaluated_files:
        for files, _ in sources:
            refuse_evaluated_files(files, questions, check)
    merged = LeakReport(questions=len(questions), n=check.ngram)
    for files, spec in sources:
        report, path = leak_report(files, spec, check, cache_dir, data_dir, questions)
        lines = describe(report, path)
        (log.warning if report.hits else log.info)(lines[0])
        for line in lines[1:]:
            log.warning("  %s", line)
        merged.records += report.records
        merged.hits += report.hits
    merged.hits.sort(key=lambda hit: (not hit.exact, -hit.overlap, hit.where))
    return merged


def to_dict(report: LeakReport) -> dict[str, Any]:
    return {"records": report.records, "questions": report.questions, "exact": len(report.exact),
            "overlap": len(report.hits) - len(report.exact)}
