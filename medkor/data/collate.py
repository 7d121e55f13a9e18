"""Rows -> training batches (the contract in docs/architecture.md).

`input_ids`, `labels` (-100 = ignored; the model shifts), `attention_mask`
(1 = real token) and `position_ids` (restart at 0 at every document start and at
the start of every row), all `torch.long` of shape (B, T). Packed rows all have
`max_length` tokens except possibly the last one, so padding is rare and dynamic.

Beside them, facts about the batch that the training step would otherwise have to
read back from the device (each read makes the host wait for the GPU), computed here
on the host from the rows: `num_tokens` (real tokens, int), `packed` (some row holds
a document start after its first token, bool) and `loss_positions` (`torch.long`,
the flat indices into (B, T - 1) of the shifted targets that count: position t of
row b, predicting labels[b, t + 1], is `b * (T - 1) + t`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100


def position_ids_for(length: int, doc_starts: np.ndarray) -> np.ndarray:
    """Positions counting from the last document start at or before each token."""
    marks = np.zeros(length, dtype=np.int64)
    marks[np.asarray(doc_starts, dtype=np.int64)] = np.asarray(doc_starts, dtype=np.int64)
    return np.arange(length, dtype=np.int64) - np.maximum.accumulate(marks)


class Collator:
    """Pads a list of (input_ids, doc_starts[, ignored_spans]) rows to the longest one.

    Labels are the ids except at padding, at every document start, and inside the
    row's ignored [start, end) spans (prompt and template tokens).

    Args:
        pad_token_id: Id written into padding positions (they are masked and ignored).
        pad_to_multiple_of: Round the padded length up to a multiple of this (1 = none).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)

    def __call__(self, rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
        longest = max(len(row[0]) for row in rows)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(rows)
        input_ids = np.full((batch, width), self.pad_token_id, dtype=np.int64)
        labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((batch, width), dtype=np.int64)
        positions = np.zeros((batch, width), dtype=np.int64)
        for i, (ids, starts, *rest) in enumerate(rows):
            n = len(ids)
            input_ids[i, :n] = ids
            labels[i, :n] = ids
            # a document's first token (BOS) is never a target: nothing before it predicts it
            labels[i, np.asarray(starts, dtype=np.int64)] = IGNORE_INDEX
            spans = rest[0] if rest else ()
            for begin, end in zip(spans[0::2], spans[1::2]):
                labels[i, begin:end] = IGNORE_INDEX
            attention[i, :n] = 1
            positions[i, :n] = position_ids_for(n, starts)
        packed = any(np.any(np.asarray(row[1]) > 0) for row in rows)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention),
            "position_ids": torch.from_numpy(positions),
            "num_tokens": int(sum(len(row[0]) for row in rows)),
            "packed": bool(packed),
            "loss_positions": torch.from_numpy(loss_positions(labels)),
        }


def loss_positions(labels: np.ndarray) -> np.ndarray:
    """Flat indices into (B, T - 1) of the shifted targets that are not ignored (`torch.long` order)."""
    return np.flatnonzero(labels[:, 1:] != IGNORE_INDEX).astype(np.int64)
