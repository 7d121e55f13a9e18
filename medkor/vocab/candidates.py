"""Candidate tokens: mined from the corpus, read from term lists, filtered, scored.

A candidate is a string in model space (`▁` = preceding space). It is kept only if
it is Korean (Hangul syllables after an optional leading `▁`), not already a base
or special token, and split by the base tokenizer into two or more pieces. Its
score estimates the tokens it saves on the mining corpus: occurrences times
(base pieces - 1).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from tokenizers import Tokenizer

from medkor.vocab.korean import is_korean_token, korean_words, syllables, to_text
from medkor.vocab.subword import piece_counts, train_bpe

METHODS = ("words", "subwords", "both")
SOURCES = ("term", "word", "subword")  # precedence when a string comes from several
MAX_SYLLABLES = 12  # longer Hangul runs are rare compounds or run-together text


@dataclass(frozen=True)
class Candidate:
    """One string that may become a token.

    Attributes:
        token: the string in model space.
        source: `term` (from --terms), `word` (frequent corpus word) or `subword`
            (piece of a BPE trained on the corpus).
        frequency: occurrences in the mining corpus (words starting with it, for terms).
        base_pieces: pieces the base tokenizer splits it into.
    """

    token: str
    source: str
    frequency: int
    base_pieces: int

    @property
    def score(self) -> int:
        """Tokens it would save on the mining corpus if used at every occurrence."""
        return self.frequency * (self.base_pieces - 1)


def word_counts(docs: Iterable[str]) -> Counter[str]:
    """Occurrences of every Korean word of `docs`, `▁`-prefixed where a space precedes it."""
    counts: Counter[str] = Counter()
    for doc in docs:
        counts.update(korean_words(doc))
    return counts


def subword_counts(docs: list[str], vocab_size: int, min_frequency: int) -> Counter[str]:
    """Usage of the Korean pieces of a BPE trained on `docs` (the subword method)."""
    trained = train_bpe(docs, vocab_size=vocab_size, min_frequency=min_frequency)
    return Counter({p: n for p, n in piece_counts(trained, docs).items() if is_korean_token(p)})


def prefix_counts(words: Counter[str], prefixes: Iterable[str]) -> Counter[str]:
    """For each of `prefixes`, how many word occurrences start with it."""
    wanted = set(prefixes)
    longest = max((len(p) for p in wanted), default=0)
    counts: Counter[str] = Counter()
    for word, n in words.items():
        for end in range(1, min(len(word), longest) + 1):
            if word[:end] in wanted:
                counts[word[:end]] += n
    return counts


def count_pieces(base: Tokenizer, tokens: list[str]) -> list[int]:
    """How many pieces the base tokenizer splits each token (alone) into."""
    encodings = base.encode_batch([to_text(t) for t in tokens], add_special_tokens=False)
    return [len(e.ids) for e in encodings]


def build_candidates(
    base: Tokenizer,
    known: set[str],
    docs: list[str],
    method: str,
    min_frequency: int,
    terms: list[str] | None = None,
    term_min_frequency: int = 3,
    subword_vocab_size: int = 32000,
) -> list[Candidate]:
    """All acceptable candidates of `docs` (and `terms`): terms first, then by score.

    Args:
        base: the base tokenizer (to count pieces).
        known: strings that must not be added (base vocabulary and special tokens).
        docs: the mining corpus.
        method: `words`, `subwords` or `both`.
        min_frequency: corpus occurrences a mined word or piece needs.
        terms: word-initial term candidates (see `read_terms`); preferred later on.
        term_min_frequency: corpus occurrences (as a word start) a term needs.
        subword_vocab_size: vocabulary size of the BPE trained for the subword method.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    words = word_counts(docs)
    found: dict[str, tuple[str, int]] = {}
    if terms:
        for term, n in prefix_counts(words, terms).items():
            if n >= term_min_frequency:
                found[term] = ("term", n)
        if term_min_frequency <= 0:
            for term in terms:
                found.setdefault(term, ("term", 0))
    if method in ("words", "both"):
        for word, n in words.items():
            if n >= min_frequency:
                found.setdefault(word, ("word", n))
    if method in ("subwords", "both"):
        for piece, n in subword_counts(docs, subword_vocab_size, max(min_frequency, 2)).items():
            if n >= min_frequency:
                found.setdefault(piece, ("subword", n))

    strings = [t for t in found if t not in known and is_korean_token(t) and syllables(t) <= MAX_SYLLABLES]
    pieces = count_pieces(base, strings)
    kept = [Candidate(t, found[t][0], found[t][1], p) for t, p in zip(strings, pieces) if p >= 2]
    # Terms first (they are preferred), then every mined candidate by estimated saving.
    kept.sort(key=lambda c: (c.source != "term", -c.score, c.token))
    return kept
