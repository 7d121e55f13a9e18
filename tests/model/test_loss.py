"""Chunked cross-entropy equals the naive loss (value and gradients) and the model's own."""

from __future__ import annotations

import pytest
import torch

from medkor.model.loss import IGNORE_INDEX, chunked_cross_entropy, naive_cross_entropy


def _case(seed=0, b=2, t=33, h=16, v=101):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :5] = IGNORE_INDEX
    labels[1, -7:] = IGNORE_INDEX
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_matches_naive_value_and_gradients(chunk):
    hidden, weight, labels = _case()
    naive = naive_cross_entropy(hidden @ weight.T, labels)
    gh, gw = torch.autograd.grad(naive, (hidden, weight))
    loss, count = chunked_cross_entropy(hidden, weight, labels, chunk_size=chunk)
    ch, cw = torch.autograd.grad(loss, (hidden, weight))
    assert count == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert abs(loss.item() - naive.item()) < 1e-5
    torch.testing.assert_close(ch, gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cw, gw, rtol=1e-5, atol=1e-6)


def test_softcap_matches_capped_logits():
    hidden, weight, labels = _case(seed=1)
    logits = torch.tanh((hidden @ weight.T) / 3.0) * 3.0
    loss, _ = chunked_cross_entropy(hidden, weight, labels, chunk_size=5, softcap=3.0)
    assert abs(loss.item() - naive_cross_entropy(logits, labels).item()) < 1e-5


def test_no_labelled_token_gives_zero_with_a_gradient():
    hidden, weight, labels = _case()
    labels[:] = IGNORE_INDEX
    loss, count = chunked_cross_entropy(hidden, weight, labels)
    loss.backward()
    assert count == 0 and loss.item() == 0.0 and hidden.grad is not None


def test_frozen_head_gets_no_gradient_and_bad_chunk_is_refused():
    hidden, weight, labels = _case()
    weight = weight.detach()
    loss, _ = chunked_cross_entropy(hidden, weight, labels, chunk_size=8)
    loss.backward()
    assert hidden.grad is not None
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, weight, labels, chunk_size=0)


def test_module_loss_equals_transformers_loss(assets):
    from medkor.model import MedGemmaModule

    module = MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), trainable="full", loss_chunk_size=3)
    ids = module.tokenizer([" 당뇨병성 신경병증 환자", " 심근경색 <dx> 고혈압은"], padding=True, return_tensors="pt")
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, IGNORE_INDEX)
    batch = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "labels": labels}
    ours, _ = module.loss(batch)
    theirs = module.model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], labels=labels).loss
    assert abs(ours.item() - theirs.item()) < 1e-5
