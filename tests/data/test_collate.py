"""Batches follow the contract: labels -100 on pads and BOS, positions restart per document."""

from __future__ import annotations

import numpy as np
import torch

from medkor.data.collate import IGNORE_INDEX, Collator, position_ids_for


def test_position_ids_restart_at_each_document_and_row_start():
    assert position_ids_for(8, np.array([3, 6])).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert position_ids_for(4, np.array([], dtype=np.int32)).tolist() == [0, 1, 2, 3]


def test_batch_contract():
    rows = [
        (np.array([2, 10, 11, 1, 2, 12], dtype=np.int32), np.array([0, 4], dtype=np.int32)),
        (np.array([13, 1, 2], dtype=np.int32), np.array([2], dtype=np.int32)),
    ]
    batch = Collator(pad_token_id=0)(rows)
    tensors = {"input_ids", "labels", "attention_mask", "position_ids"}
    assert set(batch) == tensors | {"num_tokens", "packed", "loss_positions"}
    assert all(batch[k].dtype == torch.long and batch[k].shape == (2, 6) for k in tensors)
    assert batch["num_tokens"] == 9 and batch["packed"] is True and batch["loss_positions"].tolist() == [0, 1, 2, 4, 5]
    assert batch["input_ids"][1].tolist() == [13, 1, 2, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 10, 11, 1, IGNORE_INDEX, 12]
    assert batch["labels"][1].tolist() == [13, 1, IGNORE_INDEX] + [IGNORE_INDEX] * 3
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1]
    assert batch["position_ids"][1][:3].tolist() == [0, 1, 0]


def test_pad_to_multiple():
    rows = [(np.array([5, 6, 7], dtype=np.int32), np.array([0], dtype=np.int32))]
    assert Collator(pad_token_id=0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (1, 8)
