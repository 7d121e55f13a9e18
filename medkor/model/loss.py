"""Causal-LM cross-entropy without materialising the full logits.

With a 272k vocabulary the (tokens x vocab) float32 logits, their softmax and
gradient are the largest tensors of a step. Here the output head runs over
chunks of positions under activation checkpointing: the forward keeps only each
chunk's loss, and the backward recomputes one chunk's logits at a time, so peak
memory holds one chunk's logits instead of all of them. Only positions with a
label are computed at all.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def shift_for_next_token(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (hidden, target) pairs: position t predicts labels[t + 1]; ignored ones dropped."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    keep = y != IGNORE_INDEX
    return h[keep], y[keep]


def _chunk_loss_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: Optional[float]
) -> torch.Tensor:
    logits = F.linear(hidden, weight)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    # Upcast as Hugging Face's loss does, so the value matches the model's own loss.
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 512,
    softcap: Optional[float] = None,
) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy of `hidden @ weight.T` against unshifted `labels`.

    Args:
        hidden: final hidden states (B, T, H) before the output head.
        weight: output head (V, H), e.g. the tied input embedding.
        labels: (B, T) token ids, `-100` where no loss is taken; not shifted.
        chunk_size: positions per chunk; peak logits memory is chunk_size x V.
        softcap: Gemma-style final logit soft-capping, if the config uses it.

    Returns:
        (mean loss, number of predicted tokens). With no labelled token the loss
        is a zero that still depends on the inputs, so backward works everywhere.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    h, y = shift_for_next_token(hidden, labels)
    count = int(y.numel())
    if count == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0, 0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        stop = start + chunk_size
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            part = checkpoint(_chunk_loss_sum, h[start:stop], weight, y[start:stop], softcap, use_reentrant=False)
        else:
            part = _chunk_loss_sum(h[start:stop], weight, y[start:stop], softcap)
        total = total + part
    return total / count, count


def naive_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference loss from full logits (B, T, V), as transformers computes it."""
    y = labels[:, 1:].reshape(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), y, ignore_index=IGNORE_INDEX)
