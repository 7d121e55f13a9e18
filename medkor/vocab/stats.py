"""Measurements of an extension: compression, round trip, token usage, examples."""

from __future__ import annotations

import time
from typing import Any, Sequence

from tokenizers import Tokenizer

from medkor.vocab.korean import SPACE, to_text


def encode_all(tokenizer: Tokenizer, docs: Sequence[str], batch_size: int = 256) -> list:
    out = []
    for start in range(0, len(docs), batch_size):
        out.extend(tokenizer.encode_batch(list(docs[start : start + batch_size]), add_special_tokens=False))
    return out


def tokens_per_1k_chars(tokenizer: Tokenizer, docs: Sequence[str]) -> float:
    """Tokens per 1,000 characters of `docs` (no special tokens)."""
    chars = sum(len(d) for d in docs)
    if chars == 0:
        return 0.0
    return 1000.0 * sum(len(e.ids) for e in encode_all(tokenizer, docs)) / chars


def round_trip_failures(tokenizer: Tokenizer, docs: Sequence[str]) -> list[int]:
    """Indices of documents that do not decode back to themselves exactly."""
    encodings = encode_all(tokenizer, docs)
    decoded = tokenizer.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    return [i for i, (d, back) in enumerate(zip(docs, decoded)) if d != back]


def first_difference(tokenizer: Tokenizer, text: str, width: int = 30) -> dict[str, Any]:
    """Where `text` and its round trip part: a little of each around the first difference."""
    back = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
    at = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
    lo = max(0, at - width // 2)
    return {"text": text[lo : at + width], "decoded": back[lo : at + width], "at": at}


def measure(tokenizer: Tokenizer, docs: Sequence[str], ids: Sequence[int] = ()) -> dict[str, Any]:
    """One encoding pass over `docs`: tokens, documents that do not decode back, which of `ids` occur."""
    wanted, seen, tokens, lost = set(ids), set(), 0, []
    for start in range(0, len(docs), 256):
        batch = list(docs[start : start + 256])
        encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
        decoded = tokenizer.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
        for offset, (doc, enc, back) in enumerate(zip(batch, encodings, decoded)):
            tokens += len(enc.ids)
            if back != doc:
                lost.append(start + offset)
            if wanted:
                seen.update(i for i in enc.ids if i in wanted)
    return {"tokens": tokens, "lost": lost, "used": len(seen)}


def round_trip_report(
    base: Tokenizer, extended: Tokenizer, docs: Sequence[str], lost_base: Sequence[int], lost_ext: Sequence[int]
) -> dict:
    """Round-trip failures of base and extended counted apart, with an example of each.

    `added_by_extension` counts documents only the extension loses: those are its
    fault; the rest the base loses already (no byte fallback, `<unk>`, a lossy normalizer).
    """
    added = sorted(set(lost_ext) - set(lost_base))
    report: dict[str, Any] = {
        "documents": len(docs), "base": len(lost_base), "extended": len(lost_ext), "added_by_extension": len(added)
    }
    if lost_base:
        report["base_example"] = first_difference(base, docs[min(lost_base)])
    if added:
        report["extension_example"] = first_difference(extended, docs[added[0]])
    return report


def _covered(encoding, start: int, end: int) -> bool:
    """True when one token spans the characters [start, end) from its first one."""
    return any(s == start and e >= end for s, e in encoding.offsets)


def not_formed_alone(tokenizer: Tokenizer, tokens: Sequence[str]) -> list[str]:
    """Tokens that their own text does not encode to (ids no text would ever reach alone)."""
    encodings = tokenizer.encode_batch([to_text(t) for t in tokens], add_special_tokens=False)
    return [t for t, enc in zip(tokens, encodings) if enc.tokens != [t]]


def word_starts_kept_whole(tokenizer: Tokenizer, docs: Sequence[str], word_initial: set[str]) -> tuple[int, int]:
    """(occurrences, covered): word starts of `docs` that begin with one of `word_initial`.

    At each word start the longest such string is looked up; it is covered when one
    token spans it (alone or inside a longer token).
    """
    longest = max((len(t) for t in word_initial), default=0)
    seen = covered = 0
    for doc, enc in zip(docs, encode_all(tokenizer, docs)):
        model_text = doc.replace(" ", SPACE)
        start = model_text.find(SPACE)
        while start != -1:
            match = next(
                (model_text[start:end] for end in range(min(len(model_text), start + longest), start, -1)
                 if model_text[start:end] in word_initial),
                None,
            )
            if match is not None:
                seen += 1
                covered += _covered(enc, start, start + len(match))
            start = model_text.find(SPACE, start + 1)
    return seen, covered


def throughput(tokenizer: Tokenizer, docs: Sequence[str], repeats: int = 3) -> float:
    """Characters per second encoded (best of `repeats` batched passes)."""
    chars = sum(len(d) for d in docs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode_all(tokenizer, docs)
        best = min(best, time.perf_counter() - start)
    return chars / best


def examples(base: Tokenizer, extended: Tokenizer, docs: Sequence[str], count: int = 5, width: int = 60) -> list[dict]:
    """The first `width` characters of a few documents, tokenized both ways."""
    out = []
    for doc in list(docs)[:count]:
        text = doc[:width]
        before = base.encode(text, add_special_tokens=False).tokens
        after = extended.encode(text, add_special_tokens=False).tokens
        out.append({"text": text, "base": before, "extended": after})
    return out
