from tokenizers import Tokenizer, normalizers
from test_extend import BASE

from medkor.vocab import stats


def report(base, extended, docs):
    return stats.round_trip_report(base, extended, docs, stats.measure(base, docs)["lost"],
                                   stats.measure(extended, docs)["lost"])


def test_round_trip_failures_of_base_and_extension_are_counted_apart():
    base = BASE.to_tokenizer()
    lossy = Tokenizer.from_str(base.to_str())
    lossy.normalizer = normalizers.Sequence([normalizers.Lowercase(), base.normalizer])  # loses capitals
    unk = Tokenizer.from_str(base.to_str().replace('"byte_fallback":true', '"byte_fallback":false'))
    docs = ["당뇨병은 흔하다", "HbA1c 검사", "😀 당시"]
    only_ext = report(base, lossy, docs)
    assert (only_ext["base"], only_ext["extended"], only_ext["added_by_extension"]) == (0, 1, 1)
    assert only_ext["extension_example"] == {"text": "HbA1c 검사", "decoded": "hba1c 검사", "at": 0}
    both = report(unk, lossy, docs)
    assert (both["base"], both["extended"], both["added_by_extension"]) == (3, 1, 0)  # 흔, 하, 😀 are <unk>
    assert both["base_example"]["text"] == docs[0] and "<unk>" in both["base_example"]["decoded"]


def test_one_pass_measures_tokens_losses_and_new_token_use():
    tok = BASE.to_tokenizer()
    assert stats.not_formed_alone(tok, ["당시", "▁당시", "병은", "당뇨"]) == ["당뇨"]
    ids = [BASE.vocab["병은"], BASE.vocab["▁당시"]]
    assert stats.measure(tok, ["당뇨병은", "원"], ids) == {"tokens": 4, "lost": [], "used": 1}
