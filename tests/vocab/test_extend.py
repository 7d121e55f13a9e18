"""The BPE growth itself, on hand-made Gemma-style models where every merge is known."""

import json

import pytest
from transformers import GemmaTokenizer

from medkor.vocab.bpe_model import BpeModel, TokenizerFormatError
from medkor.vocab.extend import extend_bpe, missing_parts

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def tiny_base(tokens: list[str], merges: list[tuple[str, str]]) -> BpeModel:
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTES + ["▁"] + tokens)}
    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    return BpeModel.from_tokenizer(tok.backend_tokenizer)


def pieces(model: BpeModel, text: str) -> list[str]:
    return model.to_tokenizer().encode(text, add_special_tokens=False).tokens


# "병은" merges first, so the base cuts "당뇨병은" as 당 | 뇨 | 병은.
BASE = tiny_base(["당", "뇨", "병", "은", "원", "시", "당시", "▁당시", "병은"],
                 [("병", "은"), ("당", "시"), ("▁", "당시")])


def test_new_token_wins_inside_a_word_and_base_ids_stay():
    assert pieces(BASE, " 당뇨병은") == ["▁", "당", "뇨", "병은"]
    new = ["▁당", "▁당뇨", "▁당뇨병"]
    result = extend_bpe(BASE, new)
    assert pieces(result.model, " 당뇨병은") == ["▁당뇨병", "은"]
    assert pieces(result.model, "병 당뇨병") == ["병", "▁당뇨병"]
    assert all(result.model.vocab[t] == i for t, i in BASE.vocab.items())
    assert list(result.new_ids.values()) == list(range(BASE.size, BASE.size + 3))
    assert [result.model.vocab[t] for t in new] == list(result.new_ids.values())


def test_word_internal_token_and_round_trip():
    result = extend_bpe(BASE, ["당뇨", "당뇨병"])
    ext = result.model.to_tokenizer()
    assert pieces(result.model, "당뇨병은") == ["당뇨병", "은"]
    for text in ["당뇨병은 당시 병원", " 당뇨병 ", "x당뇨병y 😀", "당뇨  병은\n당시"]:
        assert ext.decode(ext.encode(text, add_special_tokens=False).ids) == text


def test_base_tokens_stay_reachable_when_a_chain_takes_their_first_piece():
    # The base builds "▁당시" as ▁ + 당시; the new chain forms "▁당" first, which would
    # leave "▁당" | "시" without the completion merge (▁당, 시).
    assert pieces(BASE, " 당시") == ["▁당시"]
    result = extend_bpe(BASE, ["▁당", "▁당뇨"])
    assert pieces(result.model, " 당시") == ["▁당시"]
    assert result.completion_merges >= 1


def test_priority_order_decides_overlaps_between_inner_tokens():
    first = extend_bpe(BASE, ["당뇨", "당뇨병", "병원"])
    second = extend_bpe(BASE, ["병원", "당뇨", "당뇨병"])
    assert pieces(first.model, "당뇨병원") == ["당뇨병", "원"]
    assert pieces(second.model, "당뇨병원") == ["당뇨", "병원"]


def test_word_initial_tokens_match_the_longest_prefix_whatever_their_order():
    # "뇨병" given first would take 뇨 and 병 if word-initial chains did not run first.
    for order in (["▁당", "▁당뇨", "▁당뇨병", "뇨병"], ["뇨병", "▁당뇨병", "▁당뇨", "▁당"]):
        result = extend_bpe(BASE, order)
        assert pieces(result.model, " 당뇨병은") == ["▁당뇨병", "은"]
        assert pieces(result.model, " 당뇨은") == ["▁당뇨", "은"]


def test_missing_parts_and_errors():
    assert missing_parts("▁당뇨병", BASE.vocab) == ["▁당", "▁당뇨"]
    assert missing_parts("▁폐렴", BASE.vocab) == ["폐", "렴", "▁폐"]
    with pytest.raises(ValueError, match=r"'▁당뇨병' cannot be built: \['▁당', '▁당뇨'\]"):
        extend_bpe(BASE, ["▁당뇨병"])
    with pytest.raises(ValueError, match="already in the base"):
        extend_bpe(BASE, ["당시"])
    with pytest.raises(ValueError, match="given twice"):
        extend_bpe(BASE, ["▁당", "▁당"])


def test_rejects_tokenizers_it_cannot_extend():
    spec = json.loads(BASE.to_json())
    spec["model"]["byte_fallback"] = False
    with pytest.raises(TokenizerFormatError, match="x/tokenizer.json: BPE without byte_fallback"):
        BpeModel.from_json(json.dumps(spec), "x/tokenizer.json")
    del spec["model"]["vocab"]["▁"]
    spec["model"]["byte_fallback"] = True
    with pytest.raises(TokenizerFormatError, match="no '▁' token"):
        BpeModel.from_json(json.dumps(spec), "x/tokenizer.json")
    with pytest.raises(TokenizerFormatError, match="model type is 'WordPiece'"):
        BpeModel.from_json('{"model": {"type": "WordPiece", "vocab": {}}}', "x/tokenizer.json")
