"""Measurements of an extension: compression, round trip, token usage, examples."""

from __future__ import annotations

import time
from typing import Sequence

from tokenizers import Tokenizer

from medkor.vocab.korean import SPACE, to_text

# Particles and endings that follow a noun in running Korean text.
PARTICLES = ("은", "는", "이", "가", "을", "를", "의", "에", "에서", "으로", "로", "과", "와", "도", "만")


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


def _covered(encoding, start: int, end: int) -> bool:
    """True when one token spans the characters [start, end) from its first one."""
    return any(s == start and e >= end for s, e in encoding.offsets)


def usage_contexts(token: str) -> list[tuple[str, int, int]]:
    """Texts in which `token` must be used: (text, start, end) of its span.

    A word-initial token alone, after another word, and before every particle; a
    word-internal token alone (which particle may follow it is the corpus's business).
    """
    text = to_text(token)
    if not token.startswith(SPACE):
        return [(text, 0, len(text))]
    lead = "환자"
    contexts = [(text, 0, len(text)), (lead + text, len(lead), len(lead) + len(text))]
    contexts += [(lead + text + p, len(lead), len(lead) + len(text)) for p in PARTICLES]
    return contexts


def unused_tokens(tokenizer: Tokenizer, tokens: Sequence[str]) -> list[str]:
    """Added tokens that some context of `usage_contexts` splits."""
    failed: list[str] = []
    for token in tokens:
        contexts = usage_contexts(token)
        encodings = tokenizer.encode_batch([c[0] for c in contexts], add_special_tokens=False)
        if not all(_covered(enc, s, e) for enc, (_, s, e) in zip(encodings, contexts)):
            failed.append(token)
    return failed


def corpus_usage(tokenizer: Tokenizer, docs: Sequence[str], word_initial: set[str]) -> tuple[int, int]:
    """(occurrences, covered): word starts whose longest added `▁` token is kept whole.

    Every word of `docs` that begins with an added word-initial token is looked up;
    the longest such token must appear as one token (or inside a longer one).
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
