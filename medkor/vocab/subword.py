"""A BPE trained from scratch in Gemma's `▁` convention (test bases, the benchmark's ceiling).

Training runs on words (`▁` kept at the front of the word it belongs to), so the
learned pieces are word-initial (`▁당뇨`) or word-internal (`병은`) exactly as the
base tokenizer would meet them.
"""

from __future__ import annotations

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
