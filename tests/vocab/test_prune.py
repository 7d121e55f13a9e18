from collections import Counter

from test_extend import tiny_base

from medkor.vocab.extend import extend_bpe
from medkor.vocab.prune import net_savings, space_words

# The base builds 당시원 as 당시 + 원; a new 뇨당 that forms first leaves 뇨당 | 시 | 원.
BASE = tiny_base(["당", "뇨", "시", "원", "당시", "당시원"], [("당", "시"), ("당시", "원")])


def test_a_token_that_blocks_base_tokens_more_than_it_saves_has_a_net_loss():
    result = extend_bpe(BASE, ["뇨당"])
    base, ext = BASE.to_tokenizer(), result.model.to_tokenizer()
    assert ext.encode("뇨당시원", add_special_tokens=False).tokens == ["뇨당", "시", "원"]
    assert net_savings(base, ext, Counter({"뇨당시원": 5, "뇨당": 1}), ["뇨당"]) == {"뇨당": -4.0}
    assert net_savings(base, ext, Counter({"뇨당시원": 1, "뇨당": 3}), ["뇨당"]) == {"뇨당": 2.0}


def test_space_words_follow_the_boundary_convention():
    assert space_words(["당뇨병은 흔하다.  끝", "x"]) == Counter({"당뇨병은": 1, "▁흔하다.": 1, "▁끝": 1, "x": 1})


def test_a_token_an_earlier_chain_always_breaks_is_banned_not_shipped():
    # 으로은 ranks first, so its chain merge (으, 로) beats 가으로's (가, 으): the text
    # 가으로 always becomes 가 | 으로 and 가으로 (with its prefix 가으) would be a dead id.
    from medkor.vocab.build import ExtendConfig, _select_and_extend
    from medkor.vocab.candidates import Candidate
    from medkor.vocab.stats import unused_tokens

    base = tiny_base(["가", "으", "로", "은"], [])
    candidates = [Candidate("으로은", "subword", 100, 3), Candidate("가으로", "subword", 50, 3)]
    cfg = ExtendConfig(base="", corpus=[], out="", num_new_tokens=10)
    selection, result, banned = _select_and_extend(
        base, base.to_tokenizer(), candidates, ["으로은 가으로", "가으로"], cfg
    )
    assert "가으로" in banned
    assert "가으로" not in selection.tokens and "가으" not in selection.tokens
    assert selection.tokens == ["으로", "으로은"]
    assert unused_tokens(result.model.to_tokenizer(), selection.tokens) == []
