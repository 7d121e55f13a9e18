"""Tokenizer extension for Korean (`medkor extend-vocab`), without Lightning.

`extend_vocab(ExtendConfig(...))` mines candidates (`candidates`), picks them within
a budget (`select`), grows the BPE model by merges (`extend`), drops tokens that
cost more than they save (`prune`), saves and measures (`stats`).
"""

from medkor.vocab.build import STATS_FILE, ExtendConfig, extend_vocab
from medkor.vocab.bpe_model import BpeModel, TokenizerFormatError
from medkor.vocab.extend import ExtensionResult, extend_bpe, missing_parts

__all__ = [
    "STATS_FILE",
    "BpeModel",
    "ExtendConfig",
    "ExtensionResult",
    "TokenizerFormatError",
    "extend_bpe",
    "extend_vocab",
    "missing_parts",
]
