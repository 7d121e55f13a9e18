"""Continue BPE training where the base left off: learn new merges on the base's tokenization.

The corpus words are tokenized by the base, then the most frequent adjacent pair is
merged, again and again, as a BPE trainer does from characters. Each merge adds one
token built from two existing ones, so no budget goes to prefixes that save nothing:
an intermediate exists only because it was itself the most frequent pair (or a step
of a term, see `medkor.vocab.terms`). The merges are ranked after every base merge,
so the extended tokenizer first reproduces the base tokenization and then applies
the merges learned here: no text gets longer, and the corpus is cut as simulated.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from tokenizers import Tokenizer

from medkor.vocab.korean import SPACE, to_text

Merge = tuple[str, str]


@dataclass
class LearnedMerges:
    """What continued training chose.

    Attributes:
        tokens: new tokens in the order they were learned (their ids follow this order).
        merges: merges to rank after the base merges, in this order.
        sources: token -> `merge` (a frequent pair), `char` (a character the base spelled
            in bytes), `term` (a term of --terms) or `term_part` (a step towards a term).
        saved: token -> tokens it saved on the mining words when it was made.
        free_merges: merges into tokens the base already had (they cost no id).
    """

    tokens: list[str] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    saved: dict[str, int] = field(default_factory=dict)
    free_merges: int = 0


def mergeable(token: str) -> bool:
    """A token may be formed by a new merge: `▁` only at its start; no spaces, controls or digits.

    Digits stay single, as Gemma keeps them.
    """
    body = token[1:] if token.startswith(SPACE) else token
    return bool(body) and not any(
        ch == SPACE or ch.isspace() or ch.isdigit() or unicodedata.category(ch)[0] == "C" for ch in body
    )


def space_word_counts(docs: Iterable[str]) -> Counter[str]:
    """Every space-separated word as the BPE sees it (`▁` where a space precedes)."""
    counts: Counter[str] = Counter()
    for doc in docs:
        parts = doc.replace(" ", SPACE).split(SPACE)
        if parts[0]:
            counts[parts[0]] += 1
        counts.update(SPACE + p for p in parts[1:] if p)
    return counts


def _is_byte_token(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


class WordTable:
    """Unique corpus words as symbol sequences, with counts and an index of adjacent pairs.

    A symbol is a token of `vocab`, or text the vocabulary lacks: one character that
    byte fallback spells in `len(utf-8)` byte tokens, or a span the base maps to
    `<unk>`. Such symbols never merge until they become tokens.

    Args:
        words: word -> occurrences (model space, see `space_word_counts`).
        base: the base tokenizer; it cuts every word once.
        vocab: the vocabulary, extended in place as tokens are learned.
        byte_fallback: whether the base spells missing characters in bytes.
        unk_token: the base's unknown token, never merged.
    """

    def __init__(
        self, words: Counter[str], base: Tokenizer, vocab: dict[str, int],
        byte_fallback: bool = True, unk_token: str | None = "<unk>",
    ):
        self.vocab = vocab
        self.base = base
        self.byte_fallback = byte_fallback
        self.unk_token = unk_token
        self.counts: list[int] = []
        self.symbols: list[list[str]] = []
        self.index: dict[str, int] = {}
        self.pairs: Counter[Merge] = Counter()
        self.where: dict[Merge, set[int]] = defaultdict(set)
        self.missing: Counter[str] = Counter()  # text the vocabulary lacks -> occurrences
        self.add_words(list(words), [words[w] for w in words])

    def add_words(self, words: list[str], counts: list[int]) -> None:
        """Register `words` (a count of 0 follows a word's cut without counting it)."""
        fresh = [(w, n) for w, n in zip(words, counts) if w not in self.index]
        encodings = self.base.encode_batch([to_text(w) for w, _ in fresh], add_special_tokens=False)
        for (word, n), enc in zip(fresh, encodings):
            i = len(self.symbols)
            self.index[word] = i
            self.counts.append(n)
            self.symbols.append(self._symbols(to_text(word), enc))
            self._add(i, self.symbols[i])
            for s in self.symbols[i]:
                if s not in self.vocab:
                    self.missing[s] += n

    def _symbols(self, text: str, enc) -> list[str]:
        out: list[str] = []
        last_span = None
        for token, span in zip(enc.tokens, enc.offsets):
            if token in self.vocab and token != self.unk_token and not _is_byte_token(token):
                out.append(token)
            elif span != last_span:  # the byte tokens of one character share its offsets
                out.append(text[span[0] : span[1]].replace(" ", SPACE))
            last_span = span
        return out

    def weight(self, symbol: str) -> int:
        """Tokens the tokenizer spends on `symbol`."""
        if symbol in self.vocab or not self.byte_fallback:
            return 1
        return len(symbol.encode("utf-8"))

    def total_tokens(self) -> int:
        """Tokens of all counted words as they are cut now."""
        return sum(n * sum(map(self.weight, s)) for n, s in zip(self.counts, self.symbols))

    def _add(self, i: int, syms: list[str], sign: int = 1) -> None:
        n = self.counts[i] * sign
        for pair in zip(syms, syms[1:]):
            self.pairs[pair] += n
            if sign > 0:
                self.where[pair].add(i)

    def merge(self, pair: Merge) -> tuple[int, set[Merge]]:
        """Apply `pair` in every word; return (tokens saved, pairs that now involve the result)."""
        a, b = pair
        joined = a + b
        saved = 0
        touched: set[Merge] = set()
        for i in self.where.pop(pair, ()):
            syms = self.symbols[i]
            if a not in syms:
                continue  # an index entry left by an earlier merge
            self._add(i, syms, -1)
            out: list[str] = []
            j = 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    out.append(joined)
                    saved += self.counts[i]
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            self.symbols[i] = out
            self._add(i, out)
            touched.update(p for p in zip(out, out[1:]) if joined in p)
        self.pairs.pop(pair, None)
        return saved, touched

    def char_saving(self, char: str) -> int:
        """Tokens saved by making the missing `char` a token."""
        return self.missing.get(char, 0) * (self.weight(char) - 1)

    def add_char(self, char: str) -> int:
        """`char` becomes a token (the caller puts it in the vocabulary); return tokens saved."""
        saved = self.char_saving(char)
        self.missing.pop(char, None)
        return saved
