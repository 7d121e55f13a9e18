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
