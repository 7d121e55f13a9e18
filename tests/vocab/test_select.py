from collections import Counter

from medkor.vocab.candidates import Candidate, build_candidates, prefix_counts
from medkor.vocab.select import select_tokens

VOCAB = {t: i for i, t in enumerate(["<unk>", "▁", "당", "뇨", "병", "은", "폐", "렴", "▁당"])}


def cand(token, source="word", frequency=10, pieces=3):
    return Candidate(token, source, frequency, pieces)


def test_budget_counts_the_prefixes_a_token_needs():
    chosen = select_tokens([cand("▁당뇨병"), cand("▁폐렴"), cand("병은")], VOCAB, budget=3)
    # Best saving per token spent first: 병은 costs 1; ▁당뇨병 brings ▁당뇨 (▁당 is a base
    # token) and costs 2; then the budget is spent.
    assert chosen.tokens == ["병은", "▁당뇨", "▁당뇨병"]
    assert chosen.sources == {"▁당뇨": "prefix", "▁당뇨병": "word", "병은": "word"}
    tight = select_tokens([cand("▁당뇨병"), cand("▁폐렴"), cand("병은")], VOCAB, budget=2)
    assert tight.tokens == ["병은"] and tight.skipped == 2  # each other one needs 2 more
    assert select_tokens([cand("▁당뇨병")], VOCAB, budget=0).tokens == []


def test_a_candidate_that_is_another_ones_prefix_keeps_its_source_and_is_not_duplicated():
    chosen = select_tokens([cand("▁당뇨병", frequency=9), cand("▁당뇨", "subword", 5)], VOCAB, budget=10)
    assert chosen.tokens == ["▁당뇨", "▁당뇨병"]
    assert chosen.sources["▁당뇨"] == "subword"
    chars = select_tokens([cand("간암")], VOCAB, budget=10)
    assert chars.tokens == ["간", "암", "간암"] and chars.by_source() == {"char": 2, "word": 1}


def test_candidates_filter_prefer_terms_and_score(base_dir, corpus_docs):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(base_dir))
    base = hf.backend_tokenizer
    vocab = hf.get_vocab()
    terms = ["▁갑상선기능저하증", "▁없는용어", "▁환자"]
    cands = build_candidates(base, set(vocab), corpus_docs, "both", 3, terms=terms)
    tokens = [c.token for c in cands]
    assert len(tokens) == len(set(tokens))
    assert tokens[0] == "▁갑상선기능저하증" and cands[0].source == "term"
    assert "▁없는용어" not in tokens  # never in the corpus
    for c in cands:
        assert c.token not in vocab and c.base_pieces >= 2
        assert c.token.strip("▁") and not any(ch.isspace() or ord(ch) < 32 for ch in c.token)
    mined = [c for c in cands if c.source != "term"]
    assert [c.score for c in mined] == sorted((c.score for c in mined), reverse=True)
    assert {c.source for c in mined} == {"word", "subword"}
    words_only = build_candidates(base, set(vocab), corpus_docs, "words", 3)
    assert {c.source for c in words_only} == {"word"}


def test_prefix_counts_count_word_starts():
    words = Counter({"▁당뇨병은": 3, "▁당뇨병": 2, "당뇨병": 7, "▁당뇨": 1})
    assert prefix_counts(words, ["▁당뇨병", "▁당"]) == Counter({"▁당뇨병": 5, "▁당": 6})
