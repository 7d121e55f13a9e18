"""Keep only new tokens that pay off on the corpus.

A chain that forms early can block a base token the base would have built, so a
new token can make some words longer (`▁질환자는` as `▁질환` `자` `는` once a chain
forms `▁질환` first). Every distinct corpus word is tokenized before and after; the
change, times the word's count, is credited to (or charged on) the new tokens in
its new tokenization, or, when it has none, on the new tokens whose chains formed
its pieces. Tokens whose net effect is a loss are banned and the selection is redone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from tokenizers import Tokenizer

from medkor.vocab.korean import SPACE


def space_words(docs: Iterable[str]) -> Counter[str]:
    """Every space-separated word as the BPE sees it (`▁` where a space precedes)."""
    counts: Counter[str] = Counter()
    for doc in docs:
        parts = doc.replace(" ", SPACE).split(SPACE)
        counts[parts[0]] += 1
        counts.update(SPACE + p for p in parts[1:] if p)
    counts.pop("", None)
    return counts


def net_savings(base: Tokenizer, extended: Tokenizer, words: Counter[str], new_tokens: list[str]) -> dict[str, float]:
    """Tokens each new token saves on `words` (negative: it costs tokens)."""
    new = set(new_tokens)
    # pieces a chain forms -> new tokens whose chains pass through them
    users: dict[str, list[str]] = defaultdict(list)
    for token in new_tokens:
        for end in range(2, len(token)):
            users[token[:end]].append(token)
    unique = list(words)
    before = base.encode_batch(unique, add_special_tokens=False)
    after = extended.encode_batch(unique, add_special_tokens=False)
    net: dict[str, float] = {t: 0.0 for t in new_tokens}
    for word, b, a in zip(unique, before, after):
        change = (len(b.ids) - len(a.ids)) * words[word]
        if change == 0:
            continue
        owners = [p for p in a.tokens if p in new] or [u for p in a.tokens for u in users.get(p, [])]
        for owner in set(owners):
            net[owner] += change / len(set(owners))
    return net
