"""A BPE trained on the corpus, in Gemma's `▁` convention (the subword method).

Training runs on words (`▁` kept at the front of the word it belongs to), so the
learned pieces are word-initial (`▁당뇨`) or word-internal (`병은`) exactly as the
base tokenizer would meet them.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from medkor.vocab.korean import SPACE


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-fallback BPE on `texts` with spaces as `▁` and words kept whole.

    Args:
        texts: documents (plain text).
        vocab_size: largest vocabulary the trainer may reach (alphabet included).
        min_frequency: a pair is merged only if it occurs at least this often.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    # Split before each `▁` so it stays with the word it starts.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SPACE), behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<unk>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def piece_counts(tokenizer: Tokenizer, texts: list[str], batch_size: int = 512) -> Counter[str]:
    """How often each piece is used when `tokenizer` encodes `texts`."""
    counts: Counter[str] = Counter()
    for start in range(0, len(texts), batch_size):
        for encoding in tokenizer.encode_batch(texts[start : start + batch_size], add_special_tokens=False):
            counts.update(encoding.tokens)
    return counts
