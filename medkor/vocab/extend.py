"""Grow a BPE model by learned merges, so that BPE itself produces the new tokens.

Why merges and not `add_tokens`: added tokens are cut out of the text before the
model runs, so the text around them loses its `▁` word-boundary marker, Korean
gets longer and decode stops restoring spaces. Tokens that live inside the BPE
keep the convention and are used inside words (`당뇨병` in `당뇨병은`).

The new ids follow every base id in the order the tokens were learned. The learned
merges rank after every base merge: BPE applies the lowest-ranked merge present
first, so each text is first cut exactly as the base cuts it, then the learned
merges apply in their order (a base merge fires again only on a base token that
a learned merge formed). A merge only joins, so no text gets more tokens than the
base gives it.
After them come alternative merges: every other split of a new token into two
tokens, so the token also forms where its text was cut differently (alone, or
next to other text). They too only join.
"""

from __future__ import annotations

from dataclasses import dataclass

from medkor.vocab.bpe_model import BpeModel, Merge
from medkor.vocab.merges import LearnedMerges


@dataclass(frozen=True)
class ExtensionResult:
    """A grown model and what changed.

    Attributes:
        model: the extended BPE (base ids unchanged, new ids after them).
        new_ids: token -> id of every added token, in id order.
        learned_merges: merges appended in learned order (free ones included).
        alternative_merges: other splits of new tokens appended after them.
    """

    model: BpeModel
    new_ids: dict[str, int]
    learned_merges: int
    alternative_merges: int


def grow_bpe(base: BpeModel, learned: LearnedMerges) -> ExtensionResult:
    """`base` with the tokens and merges of `learned`.

    Raises ValueError for a token that is already in the base, duplicated or a
    special token, and for a merge whose parts or result are not tokens.
    """
    vocab = dict(base.vocab)
    specials = base.special_contents()
    new_ids: dict[str, int] = {}
    first_id = base.size
    for token in learned.tokens:
        if token in new_ids:
            raise ValueError(f"token {token!r} is given twice")
        if token in vocab or token in specials:
            raise ValueError(f"token {token!r} is already in the base vocabulary or is a special token")
        new_ids[token] = vocab[token] = first_id + len(new_ids)
    merges: list[Merge] = list(base.merges)
    seen = set(merges)
    for a, b in learned.merges:
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"merge ({a!r}, {b!r}) joins or makes text that is not a token")
        if (a, b) not in seen:
            seen.add((a, b))
            merges.append((a, b))
    learned_count = len(merges) - len(base.merges)
    for token in new_ids:
        for cut in range(1, len(token)):
            pair = (token[:cut], token[cut:])
            if pair not in seen and pair[0] in vocab and pair[1] in vocab:
                seen.add(pair)
                merges.append(pair)
    return ExtensionResult(
        model=BpeModel(vocab=vocab, merges=merges, spec=base.spec),
        new_ids=new_ids,
        learned_merges=learned_count,
        alternative_merges=len(merges) - len(base.merges) - learned_count,
    )
