from medkor.vocab.korean import is_korean_token, korean_words, term_words, to_text


def test_words_carry_the_boundary_marker_only_after_a_space():
    assert korean_words("당뇨병은 (고혈압)과 제2형당뇨병 환자") == ["당뇨병은", "고혈압", "과", "▁제", "형당뇨병", "▁환자"]


def test_korean_token_filter_rejects_whitespace_control_and_mixed_script():
    assert is_korean_token("▁당뇨병") and is_korean_token("병은")
    for bad in ["▁", "", " ", "\t", "당뇨\n", "당▁뇨", "▁▁당", "insulin", "당뇨병2", "HbA1c", "\x00당"]:
        assert not is_korean_token(bad), bad


def test_terms_drop_optional_parts_and_become_word_initial():
    assert term_words("(골)수강\n") == ["▁수강"]
    assert term_words("외인공포증 타인공포증") == ["▁외인공포증", "▁타인공포증"]
    assert term_words("(Lactic dehydrogenase LDH)") == []
    assert to_text("▁당뇨병") == " 당뇨병"
