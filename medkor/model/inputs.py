"""Attention inputs for packed and padded batches, decided on the host.

Packed rows hold several documents; `position_ids` restart at 0 at each document
start, and each document must see only itself. Handed a row without a 2-D mask,
transformers would find the restarts itself (`masking_utils`), but by reading a
tensor back (`.all()` on the device, once per forward and mask kind), which makes
the host wait for the GPU. So the module builds the attention masks with
transformers' own functions (`create_causal_mask`, `create_sliding_window_causal_mask`)
from facts it knows on the host, and hands the model the finished mapping:

- not packed, no left padding: plain causal masks (SDPA keeps its `is_causal` fast
  path). Right padding needs no mask: a real token never attends to a later
  position, and padded positions carry no label.
- packed: causal within each document (document ids from the restarting
  `position_ids`, computed on the device without a read).
- left padding (never made by medkor's collate): the 2-D mask, always materialised.
  Left padding cannot be combined with packing.

`BatchFacts` comes from the collate (`medkor.data.collate`) as plain Python values;
batches built elsewhere get the same facts computed from their tensors, at the cost
of reading them back once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from medkor.model.loss import IGNORE_INDEX


@dataclass(frozen=True)
class BatchFacts:
    """What the step needs to know about a batch without reading the device."""

    packed: bool  # some row holds a document start after its first token
    left_padded: bool  # some row has padding before a real token
    num_tokens: int  # real tokens


def has_left_padding(attention_mask: torch.Tensor) -> bool:
    """True when some row has a padded position before a real token (reads the device)."""
    return bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any())


def restarts_inside(position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> bool:
    """True when position_ids restart between two real tokens of a row: packed documents (reads the device)."""
    restart = position_ids[:, 1:] - position_ids[:, :-1] != 1
    if attention_mask is not None:
        restart &= attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return bool(restart.any())


def batch_facts(batch: Mapping[str, Any]) -> BatchFacts:
    """The batch's facts: the collate's (free), else computed from the tensors (host reads)."""
    input_ids = batch["input_ids"]
    mask, positions = batch.get("attention_mask"), batch.get("position_ids")
    if "packed" in batch and "num_tokens" in batch:
        return BatchFacts(packed=bool(batch["packed"]), left_padded=False, num_tokens=int(batch["num_tokens"]))
    return facts_of(input_ids, mask, positions)


def facts_of(
    input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], position_ids: Optional[torch.Tensor]
) -> BatchFacts:
    """Facts read back from the tensors (for batches that do not carry them)."""
    left = attention_mask is not None and has_left_padding(attention_mask)
    packed = position_ids is not None and restarts_inside(position_ids, attention_mask)
    tokens = int(attention_mask.sum()) if attention_mask is not None else input_ids.numel()
    return BatchFacts(packed=packed, left_padded=left, num_tokens=tokens)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) index of the document each token belongs to: a new one wherever positions do not count on by 1."""
    before = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=before, dim=-1) != 1).cumsum(-1)


def attention_masks(
    config: Any,
    embeds_like: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    position_ids: Optional[torch.Tensor],
    facts: BatchFacts,
) -> dict[str, Any]:
    """{layer kind: mask} for Gemma 3's decoder (`attention_mask=` accepts this mapping as prepared).

    Args:
        config: the decoder's (text) config; its attention implementation picks the mask format.
        embeds_like: any (B, T, ...) tensor of the compute dtype and device (only its
            shape, dtype and device are read).
        attention_mask, position_ids: the batch's (B, T) tensors, or None.
        facts: the batch's host facts.
    """
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
        packed_sequence_mask_function,
    )

    if facts.left_padded and facts.packed:
        raise ValueError(
            "batch is left-padded and packed (position_ids restart inside a row): the model cannot keep the "
            "documents apart; pad on the right when packing"
        )
    # position_ids are never handed over: given them without a 2-D mask, transformers reads them back
    kwargs: dict[str, Any] = {"config": config, "inputs_embeds": embeds_like, "attention_mask": None,
                              "cache": None, "position_ids": None}
    if facts.left_padded:
        kwargs.update(attention_mask=attention_mask, allow_is_causal_skip=False)  # no read of the mask either
    elif facts.packed:
        if position_ids is None:
            raise ValueError("a packed batch needs position_ids (restarting at each document start)")
        kwargs["and_mask_function"] = packed_sequence_mask_function(document_ids(position_ids))
    masks = {"full_attention": create_causal_mask(**kwargs)}
    if "sliding_attention" in set(getattr(config, "layer_types", None) or ()):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return masks


def mask_padding_labels(labels: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Labels with every padded position ignored."""
    if attention_mask is None:
        return labels
    return labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
