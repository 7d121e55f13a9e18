"""Packed rows: each document sees only itself, for text-only and multimodal Gemma 3."""

from __future__ import annotations

import pytest
import torch

from medkor.model.inputs import attention_inputs, mask_padding_labels


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


def test_right_padding_drops_the_mask_left_padding_keeps_it():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 1]])
    assert attention_inputs(right, positions) == (None, positions)
    mask, pos = attention_inputs(left, torch.tensor([[0, 0, 1, 2], [0, 1, 2, 3]]))
    assert mask is left
    with pytest.raises(ValueError, match="left-padded and packed"):
        attention_inputs(left, positions)


def test_padding_labels_are_ignored():
    labels = torch.tensor([[5, 6, 7, 8]])
    out = mask_padding_labels(labels, torch.tensor([[1, 1, 1, 0]]))
    assert out.tolist() == [[5, 6, 7, -100]]
