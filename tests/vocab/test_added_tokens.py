"""An added token above the BPE vocabulary keeps its id, and new tokens follow it.

How Gemma 3 (and MedGemma) stores it: the BPE vocabulary comes from Gemma 3's
SentencePiece model of 262,144 pieces (ids 0..262,143; transformers' Gemma 3
conversion reads `gemma3_cleaned_262144_v2.spiece.model`). `<start_of_turn>` (105),
`<end_of_turn>` (106), `<start_of_image>` (255,999) and `<end_of_image>` (256,000)
are pieces of that model, listed in `added_tokens` at their vocabulary ids.
`<image_soft_token>` is not a piece: the conversion passes it as an extra special
token, so it is only in `added_tokens` (id 262,144) and in `added_tokens.json`,
not in `model.vocab`; converters that read the SentencePiece file alone
(GGUF) have no id 262,144. 262,144 + 1 = the 262,145 tokens of `len(tokenizer)`.

`tokenizers` numbers an added token that the model's vocabulary lacks from the
model's vocabulary size when it loads a file, whatever id the file gives. With
10,698 new tokens at 262,145..272,842 the vocabulary holds 272,842 entries, so
`<image_soft_token>` was moved onto 272,842, the last new token's id, and 262,144
was left empty. Here the demo base gets the same layout (an added special token
at id len(model.vocab), only in `added_tokens`) and goes through `extend_vocab`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer

from medkor.model.embeddings import extend_embeddings
from medkor.model.loading import load_model
from medkor.vocab.bpe_model import BpeModel, TokenizerFormatError
from medkor.vocab.build import ExtendConfig, extend_vocab
from medkor.vocab.extend import grow_bpe
from medkor.vocab.merges import LearnedMerges

DEMO = Path(__file__).resolve().parents[2] / "medkor" / "assets" / "demo"
IMAGE = "<image_soft_token>"
NEW_TOKENS = 60


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """The demo base with `<image_soft_token>` after its BPE vocabulary, saved as Gemma 3 saves it."""
    folder = tmp_path_factory.mktemp("added") / "base"
    tok = AutoTokenizer.from_pretrained(str(DEMO / "tiny-gemma3"))
    tok.add_tokens([AddedToken(IMAGE, special=True, normalized=False)], special_tokens=True)
    tok.save_pretrained(folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    image_id = len(spec["model"]["vocab"])
    assert IMAGE not in spec["model"]["vocab"]
    assert {"id": image_id, "content": IMAGE} in [{"id": t["id"], "content": t["content"]} for t in spec["added_tokens"]]
    (folder / "added_tokens.json").write_text(json.dumps({IMAGE: image_id}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def extended(tmp_path_factory, base_dir):
    out = tmp_path_factory.mktemp("added") / "ext"
    report = extend_vocab(ExtendConfig(base=str(base_dir), corpus=[str(DEMO / "data" / "train.jsonl")], out=str(out),
                                       num_new_tokens=NEW_TOKENS))
    return out, report


def test_extend_vocab_keeps_the_added_token_and_puts_new_ids_after_it(base_dir, extended):
    out, report = extended
    base, ext = AutoTokenizer.from_pretrained(str(base_dir)), AutoTokenizer.from_pretrained(str(out))
    image_id = base.convert_tokens_to_ids(IMAGE)
    assert image_id == len(base) - 1 == 1600
    assert report["tokens_added"] == NEW_TOKENS
    assert len(ext) == len(base) + NEW_TOKENS
    # every base id keeps its token, the added one included
    assert ext.convert_ids_to_tokens(list(range(len(base)))) == base.convert_ids_to_tokens(list(range(len(base))))
    assert ext.convert_tokens_to_ids(IMAGE) == image_id
    # new ids: exactly the range after the highest base id, in the order the report lists them
    base_vocab, ext_vocab = base.get_vocab(), ext.get_vocab()
    new = {t: i for t, i in ext_vocab.items() if t not in base_vocab}
    assert sorted(new.values()) == list(range(image_id + 1, image_id + 1 + NEW_TOKENS))
    assert [(e["token"], e["id"]) for e in report["new_tokens"]] == sorted(new.items(), key=lambda item: item[1])
    assert (report["first_new_id"], report["last_new_id"]) == (image_id + 1, image_id + NEW_TOKENS)
    # no two tokens on one id, no empty id
    assert sorted(ext_vocab.values()) == list(range(len(ext)))
    assert ext.convert_ids_to_tokens(len(ext) - 1) == report["new_tokens"][-1]["token"]
    # the added token is still cut out of text and decodes back
    text = f"<start_of_turn>user\n{IMAGE}소화성 궤양은 어떤 병인가요?{IMAGE}<end_of_turn>"
    ids = ext(text, add_special_tokens=False)["input_ids"]
    assert ids.count(image_id) == 2 and max(ids) < len(ext)
    assert ext.decode(ids) == text


def test_grown_model_writes_the_added_token_at_its_id():
    """The unit below `extend_vocab`: a grown BPE loaded by `tokenizers` itself."""
    spec = json.loads((DEMO / "tiny-gemma3" / "tokenizer.json").read_text(encoding="utf-8"))
    image_id = len(spec["model"]["vocab"])
    spec["added_tokens"].append({"id": image_id, "content": IMAGE, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    base = BpeModel.from_json(json.dumps(spec))
    assert base.size == image_id + 1
    learned = LearnedMerges(tokens=["▁궤", "▁궤양"], merges=[("▁", "궤"), ("▁궤", "양"), ("▁", "궤양")])
    result = grow_bpe(base, learned)
    tok = result.model.to_tokenizer()
    assert list(result.new_ids.values()) == list(range(image_id + 1, image_id + 1 + len(learned.tokens)))
    assert tok.token_to_id(IMAGE) == image_id
    assert {i: tok.id_to_token(i) for i in result.new_ids.values()} == {i: t for t, i in result.new_ids.items()}
    assert tok.get_vocab_size(with_added_tokens=True) == image_id + 1 + len(learned.tokens)
    assert sorted(tok.get_vocab(with_added_tokens=True).values()) == list(range(tok.get_vocab_size()))
    assert base.added_outside_vocab() == {IMAGE: image_id} and result.model.added_outside_vocab() == {IMAGE: image_id}


def test_an_added_token_whose_id_the_vocabulary_uses_is_refused():
    spec = json.loads((DEMO / "tiny-gemma3" / "tokenizer.json").read_text(encoding="utf-8"))
    spec["added_tokens"].append({"id": 1599, "content": IMAGE, "special": True, "normalized": False})
    holder = next(t for t, i in spec["model"]["vocab"].items() if i == 1599)
    with pytest.raises(TokenizerFormatError, match=rf"'{IMAGE}' has id 1599, which the vocabulary gives to '{holder}'"):
        BpeModel.from_json(json.dumps(spec)).to_json()


def test_embedding_growth_keeps_the_added_token_row_and_fills_the_new_ones(tmp_path, base_dir, extended):
    """New rows start after the added token: its row stays, each new id gets the mean of its own pieces."""
    out, _ = extended
    checkpoint = tmp_path / "model"
    shutil.copytree(DEMO / "tiny-gemma3", checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        shutil.copy(base_dir / name, checkpoint / name)
    model, base = load_model(str(checkpoint)), AutoTokenizer.from_pretrained(str(checkpoint))
    ext = AutoTokenizer.from_pretrained(str(out))
    before = model.get_input_embeddings().weight.detach().clone()
    plan = extend_embeddings(model, base, ext)
    after = model.get_input_embeddings().weight.detach()
    image_id = base.convert_tokens_to_ids(IMAGE)
    assert (plan.n_base, plan.n_tokenizer, plan.rows_after) == (image_id + 1, image_id + 1 + NEW_TOKENS, 1664)
    assert torch.equal(after[: image_id + 1], before[: image_id + 1])
    for token_id in range(image_id + 1, len(ext)):
        text = ext.convert_ids_to_tokens(token_id).replace("▁", " ")
        pieces = base(text, add_special_tokens=False)["input_ids"]
        assert pieces and image_id not in pieces
        torch.testing.assert_close(after[token_id], before[pieces].float().mean(0), rtol=0, atol=1e-6)
