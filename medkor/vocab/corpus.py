"""Read the corpus and term files that `extend-vocab` mines.

JSONL files give one document per line from a text field, checked line by line as the
data pipeline checks its sources (`medkor.data.sources.parse_line`); other files give
one document per non-empty line. Errors name the file, the line and what to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from medkor.data.sources import parse_line
from medkor.vocab.korean import term_words


class CorpusError(ValueError):
    """A corpus or terms file cannot be read as documented."""


def read_documents(paths: Sequence[str | Path], text_field: str = "text") -> list[str]:
    """All documents of `paths`, in order.

    Args:
        paths: `.jsonl` files (one JSON object a line, text under `text_field`) or
            plain text files (one document a non-empty line).
        text_field: the field holding the text in JSONL records.
    """
    docs: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise CorpusError(f"{path}: corpus file not found")
        jsonl = path.suffix.lower() in (".jsonl", ".json")
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                if jsonl:
                    text, problem = parse_line(raw, text_field)  # decodes and checks the line
                    if problem is not None:
                        raise CorpusError(f"{path}:{number}: {problem}")
                else:
                    line = _decode(raw, path, number)
                    text = line.rstrip("\r\n") if line.strip() else None
                if text is not None:
                    docs.append(text)
    if not docs:
        raise CorpusError(f"no documents in {', '.join(map(str, paths))}: give non-empty corpus files")
    return docs


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"{path}:{number}: bytes that are not UTF-8 at column {err.start + 1}; re-encode the file as UTF-8"
        ) from None


def read_terms(paths: Sequence[str | Path]) -> list[str]:
    """Word-initial Korean candidates from headword files (one headword a line), deduplicated in order."""
    seen: dict[str, None] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise CorpusError(f"{path}: terms file not found")
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                for word in term_words(_decode(raw, path, number)):
                    seen.setdefault(word, None)
    return list(seen)


def split_heldout(docs: list[str], every: int) -> tuple[list[str], list[str]]:
    """(mining, held-out): every `every`-th document is held out; `every` <= 0 holds none out."""
    if every <= 0 or len(docs) < 2:
        return docs, []
    held = [d for i, d in enumerate(docs) if i % every == every - 1]
    kept = [d for i, d in enumerate(docs) if i % every != every - 1]
    return kept, held
