"""Korean text in the tokenizer's own space: `▁` marks a preceding space.

Gemma 3 replaces every space by `▁` before its BPE runs and never splits the text
into words, so a word that follows a space is seen as `▁word` and a word at the
start of a document (or after punctuation) as `word`. Candidates are mined in that
space so that the tokens we add are exactly the strings the BPE meets.
"""

from __future__ import annotations

import re
import unicodedata

SPACE = "▁"
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3  # precomposed syllables
# A run of Hangul syllables, with the boundary marker when a space precedes it.
WORD_RE = re.compile(f"{SPACE}?[\uac00-\ud7a3]+")


def to_model_space(text: str) -> str:
    """`text` as the BPE sees it (spaces become `▁`)."""
    return text.replace(" ", SPACE)


def to_text(token: str) -> str:
    """The plain text a token stands for (`▁` back to a space)."""
    return token.replace(SPACE, " ")


def is_hangul_syllable(char: str) -> bool:
    return HANGUL_FIRST <= ord(char) <= HANGUL_LAST


def is_korean_token(token: str) -> bool:
    """True for `▁`? followed by one or more Hangul syllables and nothing else.

    This excludes whitespace-only, control, punctuation and mixed-script strings,
    and keeps `▁` only at the start, where Gemma's word-boundary convention puts it.
    """
    body = token[1:] if token.startswith(SPACE) else token
    return bool(body) and all(is_hangul_syllable(c) for c in body)


def syllables(token: str) -> int:
    """Number of Hangul syllables in a token (the `▁` does not count)."""
    return len(token) - (1 if token.startswith(SPACE) else 0)


def korean_words(text: str) -> list[str]:
    """The Hangul runs of `text` in model space, `▁`-prefixed where a space precedes."""
    return WORD_RE.findall(to_model_space(text))


def term_words(line: str) -> list[str]:
    """The Korean words of one dictionary headword line, as word-initial tokens.

    Headwords look like `당뇨병`, `(골)수강` or `외인공포증 타인공포증`: optional
    parts in parentheses are dropped, and every remaining Hangul run becomes a
    `▁`-prefixed candidate, since a headword starts a word in running text.
    """
    plain = re.sub(r"\([^)]*\)", " ", unicodedata.normalize("NFC", line))
    runs = re.findall("[\uac00-\ud7a3]+", plain)
    return [SPACE + run for run in runs]
