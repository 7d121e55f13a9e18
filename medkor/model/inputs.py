"""Attention inputs for packed and padded batches.

Packed rows hold several documents; `position_ids` restart at 0 at each document
start. Gemma 3's SDPA/eager/flex paths only build a document-aware (block-causal)
mask from restarting position_ids when no 2-D attention mask and no KV cache are
given (flash-attention takes the same route to its varlen kernel). With a mask
they fall back to one causal mask over the whole row, and tokens would attend to
the previous documents. So the mask is dropped whenever that is exact: with no
padding, or padding only after the real tokens (a real token never attends to a
later position, and padded positions carry no label). Only left padding needs the
mask, and left padding cannot be combined with packing.
"""

from __future__ import annotations

from typing import Optional

import torch

from medkor.model.loss import IGNORE_INDEX


def has_left_padding(attention_mask: torch.Tensor) -> bool:
    """True when some row has a padded position before a real token."""
    return bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any())


def restarts_inside(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
    """True when position_ids restart between two real tokens of a row (packed documents)."""
    real = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return bool(((position_ids[:, 1:] - position_ids[:, :-1] != 1) & real).any())


def attention_inputs(
    attention_mask: Optional[torch.Tensor], position_ids: Optional[torch.Tensor]
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(attention_mask, position_ids) to hand to the model; see the module docstring."""
    if attention_mask is None or not has_left_padding(attention_mask):
        return None, position_ids
    if position_ids is not None and restarts_inside(position_ids, attention_mask):
        raise ValueError(
            "batch is left-padded and packed (position_ids restart inside a row): the model cannot keep the "
            "documents apart; pad on the right when packing"
        )
    return attention_mask, position_ids


def mask_padding_labels(labels: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Labels with every padded position ignored."""
    if attention_mask is None:
        return labels
    return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
