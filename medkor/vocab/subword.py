"""A BPE trained from scratch in Gemma's `▁` convention (test bases, the benchmark's ceiling).

Training runs on words (`▁` kept at the front of the word it belongs to), so the
learned pieces are word-initial (`▁당뇨`) or word-internal (`병은`) exactly as the
base tokenizer would meet them.
"""

from __future__ import annotations

import json
from pathlib import Path
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


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def gemma_style_layout(vocab: dict[str, int], merges: list) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Gemma 3's id layout for a trained BPE: special tokens, the 256 byte tokens, then the rest by id."""
    tokens = GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    taken = set(tokens)
    tokens += [t for t in sorted(vocab, key=vocab.get) if t not in taken]
    if SPACE not in tokens:
        tokens.append(SPACE)
    pairs = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in merges]
    return {t: i for i, t in enumerate(tokens)}, pairs  # type: ignore[return-value]


def save_gemma_style(vocab: dict[str, int], merges: list[tuple[str, str]], out: Path) -> Path:
    """Save `vocab` and `merges` as a Gemma 3 tokenizer folder (transformers' `GemmaTokenizer`)."""
    from transformers import GemmaTokenizer

    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.save_pretrained(out)
    return out


def write_gemma_like(texts: list[str], out: Path, vocab_size: int) -> Path:
    """Train a BPE on `texts` and save it as a Gemma-3-style tokenizer folder.

    `vocab_size` counts the trained tokens; the special and byte tokens come on top.
    """
    model = json.loads(train_bpe(texts, vocab_size=vocab_size, min_frequency=2).to_str())["model"]
    return save_gemma_style(*gemma_style_layout(model["vocab"], model["merges"]), out)
