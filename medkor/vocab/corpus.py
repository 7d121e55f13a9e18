"""Read the corpus and term files that `extend-vocab` mines.

JSONL files give one document per line from a text field; other files give one
document per non-empty line. Errors name the file, the line and what to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

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
                line = _decode(raw, path, number)
                if not line.strip():
                    continue
                if not jsonl:
                    docs.append(line.rstrip("\r\n"))
                    continue
                docs.append(_jsonl_text(line, path, number, text_field))
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


def _jsonl_text(line: str, path: Path, number: int, text_field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}:{number}: not valid JSON ({err.msg}); every line must be one JSON object") from None
    if not isinstance(record, dict) or text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise CorpusError(
            f"{path}:{number}: no field {text_field!r} (found {keys}); pass --text_field with the field that holds the text"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise CorpusError(f"{path}:{number}: field {text_field!r} is {type(text).__name__}, expected a string")
    return text


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
