from collections import Counter

from test_extend import BASE, tiny_base

from medkor.vocab.merges import WordTable, mergeable, space_word_counts


def test_space_words_follow_the_boundary_convention():
    assert space_word_counts(["당뇨병은 흔하다.  끝", "x", " 앞"]) == Counter(
        {"당뇨병은": 1, "▁흔하다.": 1, "▁끝": 1, "x": 1, "▁앞": 1}
    )


def test_words_are_cut_by_the_base_and_missing_characters_counted_in_bytes():
    table = WordTable(Counter({"▁당뇨병은": 3, "폐렴": 2}), BASE.to_tokenizer(), dict(BASE.vocab))
    assert table.symbols == [["▁", "당", "뇨", "병은"], ["폐", "렴"]]
    assert table.missing == Counter({"폐": 2, "렴": 2})
    assert table.total_tokens() == 3 * 4 + 2 * 6  # 폐 and 렴 are three byte tokens each
    assert table.pairs[("당", "뇨")] == 3 and table.char_saving("폐") == 4


def test_a_merge_updates_words_and_pair_counts():
    table = WordTable(Counter({"▁당뇨병은": 3, "당뇨": 5, "뇨당뇨": 1}), BASE.to_tokenizer(), dict(BASE.vocab))
    table.vocab["당뇨"] = len(table.vocab)
    saved, touched = table.merge(("당", "뇨"))
    assert saved == 3 + 5 + 1
    assert table.symbols == [["▁", "당뇨", "병은"], ["당뇨"], ["뇨", "당뇨"]]
    assert table.pairs[("당", "뇨")] == 0 and table.pairs[("뇨", "당")] == 0
    assert touched == {("▁", "당뇨"), ("당뇨", "병은"), ("뇨", "당뇨")}
    assert table.pairs[("당뇨", "병은")] == 3
    assert table.total_tokens() == 3 * 3 + 5 + 2


def test_a_base_without_byte_fallback_keeps_unknown_text_as_one_unmergeable_symbol():
    base = tiny_base(["당", "은"], [])
    base.spec["model"]["byte_fallback"] = False
    table = WordTable(Counter({"당폐렴은": 2}), base.to_tokenizer(), dict(base.vocab), byte_fallback=False)
    assert table.symbols == [["당", "폐렴", "은"]]  # fused <unk>: one symbol, one token, no saving
    assert table.total_tokens() == 6 and table.char_saving("폐렴") == 0


def test_mergeable_keeps_gemma_conventions():
    for good in ["▁당뇨", "병은", "다.", "▁HbA"]:
        assert mergeable(good), good
    for bad in ["▁", "당▁뇨", "▁▁", "당\n", "2형", "당 뇨", "\x00"]:
        assert not mergeable(bad), bad
