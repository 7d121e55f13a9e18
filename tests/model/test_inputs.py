"""Packed rows: each document sees only itself, for text-only and multimodal Gemma 3, from host facts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkor.data.collate import Collator
from medkor.model.inputs import BatchFacts, attention_masks, batch_facts, facts_of, mask_padding_labels
from medkor.model.loss import next_token_loss


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_packed_documents_do_not_attend_to_each_other(assets, kind):
    from medkor.model import MedGemmaModule

    module = MedGemmaModule(str(assets[kind]), trainable="full").eval()
    a = module.tokenizer(" 당뇨병 환자는 혈당을 자주 측정해야 한다.")["input_ids"]
    b = module.tokenizer(" 폐렴의 흔한 증상은 발열과 기침이다.")["input_ids"]
    packed = torch.tensor([a + b])
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    with torch.no_grad():
        together = module(packed, torch.ones_like(packed), positions)
        alone = module(torch.tensor([b]), torch.ones(1, len(b), dtype=torch.long), torch.arange(len(b))[None])
        # The same row without restarting positions is one long document: b then sees a.
        mixed = module(packed, torch.ones_like(packed), torch.arange(packed.shape[1])[None])
    torch.testing.assert_close(together[0, len(a):], alone[0], rtol=1e-4, atol=1e-5)
    assert (mixed[0, len(a):] - alone[0]).abs().max() > 1e-3

    # the collate's batch (host facts, right padding) gives the same, and its second row is alone
    batch = Collator(pad_token_id=0)([(np.array(a + b), np.array([0, len(a)])), (np.array(b), np.array([0]))])
    assert batch["packed"] is True and batch["num_tokens"] == len(a) + 2 * len(b)
    with torch.no_grad():
        collated = module(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch_facts(batch))
    torch.testing.assert_close(collated[0, len(a):], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(collated[1, :len(b)], alone[0], rtol=1e-4, atol=1e-5)


def _masks(module, mask, positions, facts):
    from medkor.model.loading import text_config

    like = torch.empty((*mask.shape, 0))
    return attention_masks(text_config(module.hf_model), like, mask, positions, facts)


def test_masks_from_facts_right_padding_none_packed_block_causal_left_padding_kept(assets):
    from medkor.model import MedGemmaModule

    module = MedGemmaModule(str(assets["text"]), trainable="full")
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 0], [0, 1, 0, 1]])
    plain = _masks(module, right, positions, BatchFacts(packed=False, left_padded=False, num_tokens=7))
    assert plain["full_attention"] is None  # SDPA's causal fast path: padding on the right needs no mask
    packed = _masks(module, right, positions, BatchFacts(packed=True, left_padded=False, num_tokens=7))["full_attention"]
    assert packed.shape == (2, 1, 4, 4)
    # row 1 holds documents [0, 1] and [2, 3]: token 2 sees only itself, token 3 sees 2 and 3
    assert packed[1, 0].tolist() == [[True, False, False, False], [True, True, False, False],
                                     [False, False, True, False], [False, False, True, True]]
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    kept = _masks(module, left, None, BatchFacts(packed=False, left_padded=True, num_tokens=7))["full_attention"]
    assert kept[0, 0, 3].tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="left-padded and packed"):
        _masks(module, left, positions, BatchFacts(packed=True, left_padded=True, num_tokens=7))


def test_facts_read_from_tensors_match_the_collates():
    rows = [(np.array([2, 10, 11, 1, 2, 12]), np.array([0, 4])), (np.array([13, 1, 2]), np.array([0]))]
    batch = Collator(pad_token_id=0)(rows)
    read = facts_of(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    assert batch_facts(batch) == read == BatchFacts(packed=True, left_padded=False, num_tokens=9)
    unpacked = Collator(pad_token_id=0)(rows[1:])
    assert batch_facts(unpacked) == facts_of(unpacked["input_ids"], unpacked["attention_mask"],
                                             unpacked["position_ids"])
    assert not batch_facts(unpacked).packed
    assert facts_of(batch["input_ids"], torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]), None).left_padded


def test_collate_loss_positions_select_the_targets_the_labels_keep():
    rows = [(np.array([2, 10, 11, 1, 2, 12]), np.array([0, 4]), np.array([1, 2])),
            (np.array([13, 1, 2]), np.array([2]))]
    batch = Collator(pad_token_id=0)(rows)
    # shifted targets of row 0: 10 (in the ignored span), 11, 1, BOS (never a target), 12 -> positions 1, 2, 4;
    # row 1 (5 shifted positions per row): 1, then BOS and padding -> position 5 + 0
    keep = (batch["labels"][:, 1:] != -100).reshape(-1)
    assert batch["loss_positions"].tolist() == keep.nonzero().squeeze(1).tolist() == [1, 2, 4, 5]
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 6, 8), torch.randn(20, 8)
    given, n_given = next_token_loss(hidden, weight, batch["labels"], 4, None, "torch", batch["loss_positions"])
    found, n_found = next_token_loss(hidden, weight, batch["labels"], 4)
    assert n_given == n_found == int(keep.sum()) and torch.equal(given, found)


def test_padding_labels_are_ignored():
    labels = torch.tensor([[5, 6, 7, 8]])
    out = mask_padding_labels(labels, torch.tensor([[1, 1, 1, 0]]))
    assert out.tolist() == [[5, 6, 7, -100]]
