"""Pick the tokens to add within a budget, keeping the set buildable by merges.

Candidates are taken best first (terms before corpus candidates, see
`build_candidates`). A new token is built by a merge chain through all its
prefixes, so each candidate brings along its prefixes that are not tokens yet;
they count against the budget and are recorded as `prefix` (or `char` for a single
character the base vocabulary lacks and spells in bytes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from medkor.vocab.candidates import Candidate
from medkor.vocab.extend import missing_parts
from medkor.vocab.korean import syllables


@dataclass
class Selection:
    """Tokens chosen for the extension.

    Attributes:
        tokens: in priority order, every prefix before the tokens that need it.
        sources: token -> `term`, `word`, `subword`, `prefix` or `char`.
        skipped: candidates left out because their prefixes did not fit the budget.
    """

    tokens: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    def by_source(self) -> dict[str, int]:
        return dict(Counter(self.sources[t] for t in self.tokens))


def select_tokens(
    candidates: list[Candidate], base_vocab: dict[str, int], budget: int, banned: frozenset[str] = frozenset()
) -> Selection:
    """Up to `budget` tokens from `candidates` (in their order) plus the parts they need.

    Candidates that are in `banned`, or would need a banned part, are passed over.
    """
    if budget < 0:
        raise ValueError(f"the number of new tokens must be >= 0, got {budget}")
    source_of = {c.token: c.source for c in candidates}
    # Best saving per token spent: a candidate costs itself plus the parts it needs.
    candidates = sorted(
        candidates, key=lambda c: (c.source != "term", -c.score / (1 + len(missing_parts(c.token, base_vocab))))
    )
    chosen = Selection()
    known: set[str] = set(base_vocab)
    for cand in candidates:
        if len(chosen.tokens) >= budget:
            break
        if cand.token in known:
            continue  # already brought in as another candidate's prefix
        needed = missing_parts(cand.token, known)
        if cand.token in banned or banned.intersection(needed):
            continue
        if len(chosen.tokens) + len(needed) + 1 > budget:
            chosen.skipped += 1
            continue
        for token in [*needed, cand.token]:
            known.add(token)
            chosen.tokens.append(token)
            kind = "char" if syllables(token) <= 1 and not token.startswith("▁") else "prefix"
            chosen.sources[token] = source_of.get(token, kind)
    return chosen
