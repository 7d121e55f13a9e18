"""Held-out bits per character: a language-model quality figure that compares tokenizers.

Per-token loss cannot compare two tokenizers (an extended tokenizer predicts fewer,
harder tokens). Bits per character can: each text is scored as `<bos> text`, the
negative log-likelihood of every token after `<bos>` is summed (in bits), and the sum
is divided by the characters of the texts. No `<eos>` is scored, so the figure is the
cost of the text alone. It works on any Hugging Face causal LM (an exported medkor
model included): only `model(input_ids, attention_mask).logits` is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class BitsPerChar:
    """Totals over a set of texts.

    Attributes:
        bits: summed negative log2-likelihood of the text tokens.
        chars: characters of the texts (Python `len`).
        tokens: scored tokens (text tokens, `<bos>` excluded).
    """

    bits: float
    chars: int
    tokens: int

    @property
    def bpc(self) -> float:
        """Bits per character."""
        return self.bits / self.chars

    @property
    def tokens_per_1k_chars(self) -> float:
        return 1000.0 * self.tokens / self.chars


def encode_scored(tokenizer, texts: Sequence[str], max_length: Optional[int] = None) -> list[list[int]]:
    """`<bos>` + the text's ids for each text; raises for an empty text or one longer than `max_length`."""
    if tokenizer.bos_token_id is None:
        raise ValueError("bits per character needs a tokenizer with a bos token")
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = []
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"held-out text {i} is empty: nothing to score")
        if max_length is not None and len(ids) + 1 > max_length:
            raise ValueError(
                f"held-out text {i} has {len(ids) + 1} tokens with <bos>, more than max_length {max_length}; "
                "split it into shorter texts"
            )
        rows.append([tokenizer.bos_token_id] + list(ids))
    return rows


@torch.no_grad()
def bits_per_character(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: Optional[int] = None,
) -> BitsPerChar:
    """Score `texts` with `model` (eval mode for the call, restored after).

    Args:
        model: a causal LM returning `.logits` of shape (B, T, V).
        tokenizer: the tokenizer the model reads (its own ids, its `<bos>`).
        texts: held-out texts, each scored on its own.
        batch_size: texts per forward pass (right-padded, padding masked).
        max_length: refuse texts longer than this many tokens (default: the model's positions).
    """
    if not texts:
        raise ValueError("bits per character needs at least one held-out text")
    if max_length is None:
        config = model.config.get_text_config() if hasattr(model, "config") else None
        max_length = getattr(config, "max_position_embeddings", None)
    rows = encode_scored(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats = 0.0
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(map(len, chunk))
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            nats += float((nll * mask[:, 1:]).sum())
    finally:
        model.train(was_training)
    return BitsPerChar(
        bits=nats / math.log(2), chars=sum(len(t) for t in texts), tokens=sum(len(r) - 1 for r in rows)
    )
