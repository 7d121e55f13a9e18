"""Spend the budget of new tokens on what saves the most, one token at a time.

Three kinds of step compete by the tokens they save on the mining words per token
of budget (`WordTable` keeps the words as they are cut so far):
- a pair merge saves its count;
- a character the base spells in bytes saves (bytes - 1) x its count;
- a term saves its frequency per token (`TermPlan.score`, weighted by its priority).
A pair whose result is already a token costs nothing and is taken when it comes up.
The budget that the required terms still need is held back, and they are built
when it is all that is left, most frequent first.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from medkor.vocab.merges import LearnedMerges, Merge, WordTable, mergeable
from medkor.vocab.terms import TermPlan


class TermBudgetError(ValueError):
    """The required terms need more tokens than the budget holds."""


class MergeSelector:
    """Greedy selection over `table` (updated in place as tokens are learned).

    Args:
        table: the mining words on the base vocabulary.
        budget: how many tokens to add.
        min_frequency: a pair or missing character must occur this often.
        plan: the terms and their rules, or None.
        banned: tokens never to make (found unusable by an earlier round).
        forbidden: special-token text: never merged with anything, never made.
    """

    def __init__(
        self, table: WordTable, budget: int, min_frequency: int = 2, plan: TermPlan | None = None,
        banned: frozenset[str] = frozenset(), forbidden: frozenset[str] = frozenset(),
    ):
        if budget < 0:
            raise ValueError(f"the number of new tokens must be >= 0, got {budget}")
        self.table, self.vocab, self.budget = table, table.vocab, budget
        self.min_frequency, self.banned, self.forbidden = min_frequency, banned, forbidden
        self.plan = plan or TermPlan()
        self.learned = LearnedMerges()
        self.unbuildable: list[str] = []
        self.waiting: dict[str, set[Merge]] = defaultdict(set)  # missing text -> pairs it blocks
        self.pair_heap = [(-n, p) for p, n in table.pairs.items() if n >= min_frequency]
        heapq.heapify(self.pair_heap)
        single = [c for c, n in table.missing.items() if len(c) == 1 and n >= min_frequency]
        self.char_heap = [(-table.char_saving(c), c) for c in single if table.char_saving(c) > 0]
        heapq.heapify(self.char_heap)
        terms = [t for t in self.plan.frequency if t not in self.vocab]
        table.add_words(terms, [0] * len(terms))  # followed as they are cut, never counted
        self.term_heap = [(-self.plan.score(t), t) for t in terms if self.plan.score(t) > 0]
        heapq.heapify(self.term_heap)
        self.required = [t for t in self.plan.required() if t not in self.vocab]
        self._reserve_bound = self.reserve()

    # ---------------------------------------------------------------- costs
    def _cost(self, term: str) -> int | None:
        """New tokens that make `term` whole now (None: it cannot be built)."""
        missing = self._missing(term)
        if missing is None:
            return None
        return len(self.table.symbols[self.table.index[term]]) - 1 + len(missing)

    def _missing(self, term: str) -> set[str] | None:
        """Characters of `term` that must become tokens first (None: text that cannot)."""
        missing = {s for s in self.table.symbols[self.table.index[term]] if s not in self.vocab}
        if any(len(s) != 1 or s in self.banned for s in missing):
            return None
        return missing

    def reserve(self, terms: list[str] | None = None) -> int:
        """Tokens the required terms (or `terms`) that are not whole yet still need (an upper
        bound: the merges of a shared prefix are counted for each term that has it)."""
        merges, chars = 0, set()
        for term in self.required if terms is None else terms:
            missing = self._missing(term)
            if missing is not None and not self._whole(term):
                merges += len(self.table.symbols[self.table.index[term]]) - 1
                chars |= missing
        return merges + len(chars)

    def fitting_frequencies(self) -> list[int]:
        """Term frequencies from which on the required terms fit the budget, smallest first.

        The first is the smallest `required_from` (at or above the plan's) whose terms
        fit by `reserve`'s bound; the next ones follow in case a selection still finds
        it short; the last requires no term at all.
        """
        frequency = self.plan.frequency
        levels = sorted({frequency[t] for t in self.required})
        fitting = [f for f in levels if self.reserve([t for t in self.required if frequency[t] >= f]) <= self.budget]
        return fitting + [levels[-1] + 1 if levels else self.plan.required_from]

    def _whole(self, term: str) -> bool:
        return len(self.table.symbols[self.table.index[term]]) == 1 and term in self.vocab

    # ---------------------------------------------------------------- steps
    def _new_token(self, token: str, source: str, saved: int) -> None:
        self.vocab[token] = len(self.vocab)  # provisional: only membership matters here
        self.learned.tokens.append(token)
        self.learned.sources[token] = source
        self.learned.saved[token] = saved

    def _add_char(self, char: str, source: str) -> None:
        self._new_token(char, source, self.table.add_char(char))
        for pair in self.waiting.pop(char, ()):
            self._push(pair)

    def _merge(self, pair: Merge, source: str) -> None:
        joined = pair[0] + pair[1]
        saved, touched = self.table.merge(pair)
        self.learned.merges.append(pair)
        if joined in self.vocab:
            self.learned.free_merges += 1
        else:
            self._new_token(joined, source, saved)
        for p in touched:
            self._push(p)

    def _build_term(self, term: str) -> None:
        """Make `term` one token: its missing characters, then its most frequent pairs first."""
        index = self.table.index[term]
        for symbol in list(self.table.symbols[index]):
            if symbol not in self.vocab:
                self._add_char(symbol, "term_part")
        while len(syms := self.table.symbols[index]) > 1:
            pair = max(zip(syms, syms[1:]), key=lambda p: self.table.pairs.get(p, 0))
            self._merge(pair, "term_part")
        if self.learned.sources.get(term) == "term_part":
            self.learned.sources[term] = "term"

    def _push(self, pair: Merge) -> None:
        n = self.table.pairs.get(pair, 0)
        if n >= self.min_frequency:
            heapq.heappush(self.pair_heap, (-n, pair))

    def _allowed(self, pair: Merge) -> bool:
        a, b = pair
        for side in (a, b):
            if side not in self.vocab:
                self.waiting[side].add(pair)
                return False
        joined = a + b
        return not ({a, b, joined} & self.forbidden) and joined not in self.banned and mergeable(joined)

    def _top_pair(self) -> tuple[int, Merge] | None:
        """The live best pair (stale heap entries are refreshed as they surface)."""
        heap = self.pair_heap
        while heap:
            neg, pair = heap[0]
            live = self.table.pairs.get(pair, 0)
            if live == -neg and self._allowed(pair):
                return live, pair
            heapq.heappop(heap)
            if live >= self.min_frequency and live != -neg and self._allowed(pair):
                heapq.heappush(heap, (-live, pair))
        return None

    def _top_term(self) -> tuple[float, str] | None:
        while self.term_heap and self._whole(self.term_heap[0][1]):
            heapq.heappop(self.term_heap)
        return (-self.term_heap[0][0], self.term_heap[0][1]) if self.term_heap else None

    # ---------------------------------------------------------------- loop
    def run(self) -> LearnedMerges:
        while True:
            left = self.budget - len(self.learned.tokens)
            pending = [t for t in self.required if not self._whole(t)] if left <= self._reserve_bound else None
            if pending is not None:
                self._reserve_bound = self.reserve()
                if pending and left <= self._reserve_bound:
                    self._force(pending[0])
                    continue
            pair, term = self._top_pair(), self._top_term()
            char = (-self.char_heap[0][0], self.char_heap[0][1]) if self.char_heap else None
            if pair is not None and pair[1][0] + pair[1][1] in self.vocab:
                self._merge(pair[1], "merge")  # costs no id
                continue
            if left <= 0:
                if not self._drop_costly_pairs():
                    break
                continue
            best = max((c for c in (pair, char, term) if c is not None), key=lambda c: c[0], default=None)
            if best is None:
                break
            if best is char:
                heapq.heappop(self.char_heap)
                if char[1] not in self.vocab and char[1] not in self.banned:
                    self._add_char(char[1], "char")
            elif best is term:
                heapq.heappop(self.term_heap)
                cost = self._cost(term[1])
                others = self.reserve() - (cost if term[1] in self.required else 0)
                if cost is not None and cost + max(others, 0) <= left:
                    self._build_term(term[1])
            else:
                self._merge(pair[1], "merge")
        return self.learned

    def _force(self, term: str) -> None:
        cost = self._cost(term)
        if cost is None:
            self.required.remove(term)
            self.unbuildable.append(term)
            return
        left = self.budget - len(self.learned.tokens)
        if cost > left:
            pending = [t for t in self.required if not self._whole(t)]
            raise TermBudgetError(
                f"{len(pending)} of the {len(self.required)} terms seen at least {self.plan.required_from} times "
                f"do not fit into --num_new_tokens {self.budget} (they need about {self.reserve()} more tokens): "
                "raise --num_new_tokens or --term_min_frequency"
            )
        self._build_term(term)

    def _drop_costly_pairs(self) -> bool:
        """With the budget spent, keep only pairs whose result is a token already."""
        self.pair_heap = [e for e in self.pair_heap if e[1][0] + e[1][1] in self.vocab]
        heapq.heapify(self.pair_heap)
        self.char_heap, self.term_heap = [], []
        return bool(self.pair_heap)
