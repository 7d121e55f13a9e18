"""Tokenizer extension for Korean (`medkor extend-vocab`), without Lightning.

`extend_vocab(ExtendConfig(...))` cuts the corpus words with the base tokenizer
(`merges`), spends the budget on the merges, missing characters and terms that save
the most (`select`, `terms`), appends them to the BPE model (`extend`), saves and
measures (`stats`).
"""

from medkor.vocab.build import STATS_FILE, ExtendConfig, extend_vocab
from medkor.vocab.bpe_model import BpeModel, TokenizerFormatError
from medkor.vocab.extend import ExtensionResult, grow_bpe

__all__ = [
    "STATS_FILE",
    "BpeModel",
    "ExtendConfig",
    "ExtensionResult",
    "TokenizerFormatError",
    "extend_vocab",
    "grow_bpe",
]
