"""Terms from --terms: how often the corpus uses them, which must become tokens, what they cost.

A term (a `▁`-prefixed headword) competes with the corpus merges by what it saves:
made whole from p pieces it costs p - 1 tokens and saves (p - 1) x its frequency,
that is its frequency per token, as a pair merge saves its count per token. The
priority multiplies that figure. Terms the corpus uses at least `required_from`
times become single tokens whatever they save; the budget for them is held back
from the start, so they never crowd out what the corpus needs more.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable


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


@dataclass
class TermPlan:
    """The terms and how they compete for the budget.

    Attributes:
        frequency: term -> word starts in the mining corpus that begin with it.
        required_from: terms seen at least this often must become one token
            (0: every term, also those the corpus never uses).
        priority: weight on a term's saving when it competes with corpus merges.
    """

    frequency: dict[str, int] = field(default_factory=dict)
    required_from: int = 5
    priority: float = 1.0

    @classmethod
    def from_corpus(
        cls, terms: list[str], words: Counter[str], required_from: int, priority: float
    ) -> "TermPlan":
        counts = prefix_counts(words, terms)
        return cls({t: counts.get(t, 0) for t in terms}, required_from, priority)

    def required(self) -> list[str]:
        """Terms that must become tokens, most frequent first."""
        chosen = [t for t, n in self.frequency.items() if n >= self.required_from]
        return sorted(chosen, key=lambda t: (-self.frequency[t], t))

    def score(self, term: str) -> float:
        """Tokens a term saves per token it costs, weighted by the priority."""
        return self.priority * self.frequency.get(term, 0)
