"""Embedding growth and initialisation on tiny Gemma 3 checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from medkor.model.embeddings import TokenizerMismatchError, extend_embeddings, plan_growth, token_text
from medkor.model.loading import load_model


def _load(path):
    return load_model(str(path)), AutoTokenizer.from_pretrained(path)


def _expected_subword_mean(old_weight, base, ext, token_id):
    raw = ext.convert_ids_to_tokens(token_id)
    text = raw.replace("▁", " ") if raw.startswith("▁") else ext.decode([token_id])
    ids = base(text, add_special_tokens=False)["input_ids"]
    assert ids, raw
    return old_weight[ids].float().mean(0)


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_every_new_row_is_the_mean_of_its_pieces_and_old_rows_are_untouched(assets, kind):
    model, base = _load(assets[kind])
    ext = AutoTokenizer.from_pretrained(assets["ext_tok"])
    before = model.get_input_embeddings().weight.detach().clone()
    plan = extend_embeddings(model, base, ext)
    after = model.get_input_embeddings().weight.detach()
    assert plan.n_base == len(base) and plan.n_tokenizer == len(ext)
    assert plan.rows_after == before.shape[0]  # the extension fits in Gemma's padding rows
    assert torch.equal(after[: len(base)], before[: len(base)])
    for token_id in range(len(base), len(ext)):
        expected = _expected_subword_mean(before, base, ext, token_id)
        torch.testing.assert_close(after[token_id], expected, rtol=0, atol=1e-6)
    # Padding rows past the tokenizer are defined: the mean of the old rows, not leftovers.
    mean = before[: len(base)].mean(0)
    torch.testing.assert_close(after[len(ext) :], mean.expand(plan.rows_after - len(ext), -1), rtol=0, atol=1e-6)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_growth_past_the_rows_rounds_to_64_and_keeps_old_logits(assets):
    model, base = _load(assets["text"])
    ext = AutoTokenizer.from_pretrained(assets["big_ext_tok"])
    rows = model.get_input_embeddings().weight.shape[0]
    assert len(ext) > rows
    ids = torch.tensor([base(" 당뇨병 환자는 혈당을 측정한다.")["input_ids"]])
    with torch.no_grad():
        old_logits = model(input_ids=ids).logits
    before = model.get_input_embeddings().weight.detach().clone()
    plan = extend_embeddings(model, base, ext)
    assert plan.rows_after % 64 == 0 and plan.rows_after >= len(ext) > plan.rows_before
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == plan.rows_after == model.config.vocab_size
    assert type(model.get_input_embeddings()).__name__ == "Gemma3TextScaledWordEmbedding"
    assert torch.equal(weight[: len(base)], before[: len(base)])
    for token_id in (len(base), len(ext) - 1):
        torch.testing.assert_close(weight[token_id].detach(), _expected_subword_mean(before, base, ext, token_id),
                                   rtol=0, atol=1e-6)
    with torch.no_grad():
        new_logits = model(input_ids=ids).logits
    # Logits of the old tokens are unchanged; rows from len(base) on were re-initialised.
    n = len(base)
    torch.testing.assert_close(new_logits[..., :n], old_logits[..., :n], rtol=0, atol=1e-5)


def test_untied_head_first_piece_option(assets):
    model, base = _load(assets["untied"])
    ext = AutoTokenizer.from_pretrained(assets["ext_tok"])
    head_before = model.get_output_embeddings().weight.detach().clone()
    emb_before = model.get_input_embeddings().weight.detach().clone()
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    extend_embeddings(model, base, ext, output_init="first_piece")
    head = model.get_output_embeddings().weight.detach()
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(head[: len(base)], head_before[: len(base)])
    token_id = ext.convert_tokens_to_ids("▁당뇨병성")
    pieces = base(" 당뇨병성", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    torch.testing.assert_close(head[token_id], head_before[pieces[0]], rtol=0, atol=0)
    torch.testing.assert_close(emb[token_id], emb_before[pieces].mean(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", ["mean", "random"])
def test_mean_and_random_init(assets, init):
    model, base = _load(assets["text"])
    ext = AutoTokenizer.from_pretrained(assets["ext_tok"])
    before = model.get_input_embeddings().weight.detach().clone()
    torch.manual_seed(0)
    extend_embeddings(model, base, ext, init=init)
    after = model.get_input_embeddings().weight.detach()
    new = after[len(base) : len(ext)]
    mean = before[: len(base)].mean(0)
    assert torch.equal(after[: len(base)], before[: len(base)])
    if init == "mean":
        torch.testing.assert_close(new, mean.expand_as(new), rtol=0, atol=1e-6)
    else:
        assert (new - mean).abs().max() > 1e-3 and len({tuple(r.tolist()) for r in new}) == len(new)
        assert (new.std(0).mean() / before[: len(base)].std(0).mean() - 1).abs() < 0.5


def test_checkpoint_already_sized_for_its_tokenizer_is_left_alone(assets):
    model, base = _load(assets["text"])
    before = model.get_input_embeddings().weight.detach().clone()
    plan = extend_embeddings(model, base, base)
    assert not plan.extended
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_foreign_tokenizer_is_refused(assets):
    model, base = _load(assets["text"])
    other = AutoTokenizer.from_pretrained(assets["other_tok"])
    with pytest.raises(TokenizerMismatchError, match="load the tokenizer from the checkpoint folder"):
        extend_embeddings(model, base, other, base_name="ckpt", name="other")


def test_same_size_foreign_vocab_is_refused(assets, tmp_path):
    import json

    spec = json.loads((assets["ext_tok"] / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = [t for t, i in vocab.items() if i in (300, 301)]
    vocab[a], vocab[b] = 301, 300  # two base ids swapped: same size, different model
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((assets["ext_tok"] / name).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    model, base = _load(assets["text"])
    swapped = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerMismatchError, match="id 300"):
        extend_embeddings(model, base, swapped)


def test_plan_growth_errors():
    with pytest.raises(TokenizerMismatchError, match="does not belong to its weights"):
        plan_growth(n_base=600, n_tokenizer=600, rows=512)
    with pytest.raises(TokenizerMismatchError, match="fewer than"):
        plan_growth(n_base=400, n_tokenizer=300, rows=512)
    assert plan_growth(400, 520, 512, 64).rows_after == 576
    assert plan_growth(400, 520, 512, None).rows_after == 520


def test_token_text_keeps_word_boundary(assets):
    ext = AutoTokenizer.from_pretrained(assets["ext_tok"])
    assert token_text(ext, ext.convert_tokens_to_ids("▁심근경색")) == " 심근경색"
    assert token_text(ext, ext.convert_tokens_to_ids("<dx>")) == "<dx>"
