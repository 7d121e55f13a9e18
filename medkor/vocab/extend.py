"""Grow a BPE model by new tokens, built by merges so that BPE itself uses them.

Why merges and not `add_tokens`: added tokens are cut out of the text before the
model runs, so the text around them loses its `▁` word-boundary marker, Korean
gets longer and decode stops restoring spaces. Tokens that live inside the BPE
keep the convention and are used inside words (`당뇨병` in `당뇨병은`).

How a new token wins: every new token T is built as a chain over its characters,
(T[:1], T[1]) -> T[:2], (T[:2], T[2]) -> T[:3], ..., so all its prefixes are
tokens too (the caller adds the missing ones, see `missing_parts`). These chain
merges are ranked above every base merge, in two blocks:

1. chains of `▁`-prefixed tokens. A word has one `▁`, so only one chain can grow
   in it, from its start, and it grows while the next character extends a token:
   the word starts with the longest new (or promoted base) `▁` token it begins with.
2. chains of word-internal tokens, in the caller's priority order, so that of two
   overlapping new tokens the one given first wins.

Then the base merges follow in their own order and tokenize what is left exactly
as the base would tokenize those pieces. Base merges that a chain needs (such as
`▁` + `당` -> `▁당`) move up into the chain block; base tokens that were built from
a piece which now forms earlier get an extra merge from that piece (completion
merges), so text without new tokens is not split into more pieces than before.
"""

from __future__ import annotations

from dataclasses import dataclass

from medkor.vocab.bpe_model import BpeModel, Merge
from medkor.vocab.korean import SPACE


@dataclass(frozen=True)
class ExtensionResult:
    """A grown model and what changed.

    Attributes:
        model: the extended BPE (base ids unchanged, new ids after them).
        new_ids: token -> id of every added token, in id order.
        chain_merges: merges placed above the base merges (new and promoted).
        promoted_merges: base merges moved up because a chain needs them.
        completion_merges: extra merges that keep base tokens reachable.
    """

    model: BpeModel
    new_ids: dict[str, int]
    chain_merges: int
    promoted_merges: int
    completion_merges: int


def missing_parts(token: str, known: set[str] | dict[str, int]) -> list[str]:
    """The parts of `token`'s merge chain that are not in `known`, in build order.

    The chain (T[:1], T[1]) -> T[:2], (T[:2], T[2]) -> T[:3], ... needs every proper
    prefix and every single character of T to be a token: a character missing from
    the vocabulary would be spelled in bytes and no merge could use it.
    """
    parts: dict[str, None] = {}
    for j in range(1, len(token)):
        parts.setdefault(token[:j], None)
        parts.setdefault(token[j], None)
    return [p for p in sorted(parts, key=len) if p not in known and p != token]


def _chain(token: str) -> list[Merge]:
    return [(token[:j], token[j]) for j in range(1, len(token))]


def extend_bpe(base: BpeModel, tokens: list[str]) -> ExtensionResult:
    """Add `tokens` (model space, priority order) to `base` as BPE tokens.

    Raises ValueError for a token that is already in the base, duplicated, shadows a
    special token, or whose prefixes are neither base tokens nor in `tokens`.
    """
    vocab = dict(base.vocab)
    specials = base.special_contents()
    next_id = base.size
    new_ids: dict[str, int] = {}
    for token in tokens:
        if token in new_ids:
            raise ValueError(f"token {token!r} is given twice")
        if token in vocab or token in specials:
            raise ValueError(f"token {token!r} is already in the base vocabulary or is a special token")
        vocab[token] = next_id
        new_ids[token] = next_id
        next_id += 1
    for token in tokens:
        missing = missing_parts(token, vocab)
        if missing:
            raise ValueError(
                f"token {token!r} cannot be built: {missing} are not tokens; "
                "add them too (see missing_parts)"
            )

    word_initial = [t for t in tokens if t.startswith(SPACE)]
    inner = [t for t in tokens if not t.startswith(SPACE)]
    chain: list[Merge] = []
    seen: set[Merge] = set()
    for token in word_initial + inner:
        for pair in _chain(token):
            if pair not in seen:
                seen.add(pair)
                chain.append(pair)

    base_pairs = set(base.merges)
    promoted = seen & base_pairs
    rest = [m for m in base.merges if m not in seen]
    completed = _completion_merges(rest, chain, vocab, seen)
    merges = chain + completed
    return ExtensionResult(
        model=BpeModel(vocab=vocab, merges=merges, spec=base.spec),
        new_ids=new_ids,
        chain_merges=len(chain),
        promoted_merges=len(promoted),
        completion_merges=len(merges) - len(chain) - len(rest),
    )


def _completion_merges(
    rest: list[Merge], chain: list[Merge], vocab: dict[str, int], seen: set[Merge]
) -> list[Merge]:
    """`rest` with extra merges for base tokens whose first piece now forms early.

    A chain forms some base tokens (like `▁당`) before any base merge runs. A base
    token W that the base built as (`▁`, `당시`) could then never form, since `▁` is
    already taken. For each split of W into two tokens of which one is formed by a
    chain, a merge of the two is inserted right after W's own merge.
    """
    formed_early = {a + b for a, b in chain}
    existing = set(rest) | seen
    out: list[Merge] = []
    for a, b in rest:
        out.append((a, b))
        whole = a + b
        for cut in range(1, len(whole)):
            head, tail = whole[:cut], whole[cut:]
            if (head in formed_early or tail in formed_early) and head in vocab and tail in vocab and (
                head,
                tail,
            ) not in existing:
                out.append((head, tail))
                existing.add((head, tail))
    return out
