"""The BPE growth itself, on hand-made Gemma-style models where every merge is known."""

import json

import pytest
from transformers import GemmaTokenizer

from medkor.vocab.bpe_model import BpeModel, TokenizerFormatError
from medkor.vocab.extend import grow_bpe
from medkor.vocab.merges import LearnedMerges

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def tiny_base(tokens: list[str], merges: list[tuple[str, str]]) -> BpeModel:
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTES + ["▁"] + tokens)}
    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    return BpeModel.from_tokenizer(tok.backend_tokenizer)


def pieces(model: BpeModel, text: str) -> list[str]:
    return model.to_tokenizer().encode(text, add_special_tokens=False).tokens


def learned(merges: list[tuple[str, str]], chars: tuple[str, ...] = ()) -> LearnedMerges:
    out = LearnedMerges(merges=list(merges))
    out.tokens = [*chars, *(a + b for a, b in merges)]
    return out


# "병은" merges first, so the base cuts "당뇨병은" as 당 | 뇨 | 병은.
BASE = tiny_base(["당", "뇨", "병", "은", "원", "시", "당시", "▁당시", "병은"],
                 [("병", "은"), ("당", "시"), ("▁", "당시")])


def test_learned_merges_apply_after_the_base_cut_and_base_ids_stay():
    assert pieces(BASE, " 당뇨병은") == ["▁", "당", "뇨", "병은"]
    result = grow_bpe(BASE, learned([("당", "뇨"), ("▁", "당뇨"), ("▁당뇨", "병은")]))
    assert pieces(result.model, " 당뇨병은") == ["▁당뇨병은"]
    assert pieces(result.model, "당뇨 병") == ["당뇨", "▁", "병"]
    assert all(result.model.vocab[t] == i for t, i in BASE.vocab.items())
    assert list(result.new_ids) == ["당뇨", "▁당뇨", "▁당뇨병은"]
    assert list(result.new_ids.values()) == list(range(BASE.size, BASE.size + 3))
    assert result.model.merges[: len(BASE.merges)] == BASE.merges
    # Text the new merges do not touch is cut exactly as the base cuts it.
    for text in [" 당시", "병은 시원", "원당시"]:
        assert pieces(result.model, text) == pieces(BASE, text)


def test_a_character_the_base_spells_in_bytes_becomes_one_token():
    assert pieces(BASE, "폐") == ["<0xED>", "<0x8F>", "<0x90>"]
    result = grow_bpe(BASE, learned([("폐", "렴")], chars=("폐", "렴")))
    assert pieces(result.model, "폐렴은") == ["폐렴", "은"]
    assert pieces(result.model, "폐") == ["폐"]


def test_alternative_splits_form_a_token_where_its_text_was_cut_otherwise():
    # Learned as (당뇨, 병은); alone "당뇨병" is 당뇨 | 병, which the split (당뇨, 병) joins.
    result = grow_bpe(BASE, learned([("당", "뇨"), ("당뇨", "병"), ("당뇨", "병은")]))
    assert ("당뇨병", "은") in result.model.merges and result.alternative_merges >= 1
    assert pieces(result.model, "당뇨병") == ["당뇨병"]
    assert pieces(result.model, "당뇨병은") == ["당뇨병은"]


def test_round_trip_is_exact():
    result = grow_bpe(BASE, learned([("당", "뇨"), ("당뇨", "병은"), ("폐", "렴")], chars=("폐", "렴")))
    ext = result.model.to_tokenizer()
    for text in ["당뇨병은 당시 병원", " 당뇨병은 ", "x당뇨병은y 😀 폐렴", "당뇨  병은\n당시"]:
        assert ext.decode(ext.encode(text, add_special_tokens=False).ids) == text


def test_errors_name_the_token_or_merge():
    with pytest.raises(ValueError, match="already in the base"):
        grow_bpe(BASE, learned([("당", "시")]))
    with pytest.raises(ValueError, match="given twice"):
        grow_bpe(BASE, learned([("당", "뇨"), ("당", "뇨")]))
    with pytest.raises(ValueError, match=r"merge \('폐', '렴'\) joins or makes text that is not a token"):
        grow_bpe(BASE, learned([("폐", "렴")]))


def test_rejects_tokenizers_it_cannot_extend_and_accepts_a_base_without_byte_fallback():
    spec = json.loads(BASE.to_json())
    spec["model"]["byte_fallback"] = False
    assert not BpeModel.from_json(json.dumps(spec), "x/tokenizer.json").byte_fallback  # its losses are its own
    del spec["model"]["vocab"]["▁"]
    with pytest.raises(TokenizerFormatError, match="no '▁' token"):
        BpeModel.from_json(json.dumps(spec), "x/tokenizer.json")
    with pytest.raises(TokenizerFormatError, match="model type is 'WordPiece'"):
        BpeModel.from_json('{"model": {"type": "WordPiece", "vocab": {}}}', "x/tokenizer.json")
