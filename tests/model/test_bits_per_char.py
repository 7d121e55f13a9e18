"""Held-out bits per character: the sum of token NLL in bits over the text's characters."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from medkor.model.bits_per_char import bits_per_character
from medkor.model.loading import load_model

TEXTS = [" 당뇨병성 신경병증은 말초 신경을 손상시킨다.", " 심근경색", " 항생제는 세균 감염 치료에 사용된다. 고혈압은"]


def test_bits_are_the_summed_token_nll_of_each_text_alone(assets):
    model, tokenizer = load_model(str(assets["text"])), AutoTokenizer.from_pretrained(assets["ext_tok"])
    assert len(tokenizer) <= model.get_input_embeddings().weight.shape[0]
    model.train()
    scored = bits_per_character(model, tokenizer, TEXTS, batch_size=2)  # padding inside a batch
    nats = 0.0
    for text in TEXTS:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model.eval()(input_ids=ids).logits[0, :-1]
        nats -= float(torch.log_softmax(logits.double(), -1).gather(1, ids[0, 1:, None]).sum())
    assert scored.chars == sum(map(len, TEXTS))
    assert scored.tokens == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    assert scored.bits == pytest.approx(nats / math.log(2), rel=1e-5)
    assert scored.bpc == pytest.approx(nats / math.log(2) / scored.chars, rel=1e-5)
    model.train()
    bits_per_character(model, tokenizer, TEXTS[:1])
    assert model.training  # the caller's mode is kept


def test_bad_texts_are_refused(assets):
    model, tokenizer = load_model(str(assets["text"])), AutoTokenizer.from_pretrained(assets["base_tok"])
    with pytest.raises(ValueError, match="held-out text 1 is empty"):
        bits_per_character(model, tokenizer, ["당뇨병", ""])
    with pytest.raises(ValueError, match=r"held-out text 0 has \d+ tokens with <bos>, more than max_length 4"):
        bits_per_character(model, tokenizer, ["당뇨병 환자는 혈당을 자주 측정해야 한다."], max_length=4)
    with pytest.raises(ValueError, match="at least one held-out text"):
        bits_per_character(model, tokenizer, [])
