from collections import Counter

import pytest
from test_extend import BASE, pieces

from medkor.vocab.extend import grow_bpe
from medkor.vocab.merges import WordTable
from medkor.vocab.select import MergeSelector, TermBudgetError
from medkor.vocab.terms import TermPlan, prefix_counts

WORDS = Counter({"▁당뇨병은": 40, "당시원": 30, "▁폐렴": 12, "폐렴은": 9, "▁원시": 2})


def select(words=WORDS, budget=10, plan=None, min_frequency=2, banned=frozenset()):
    table = WordTable(words, BASE.to_tokenizer(), dict(BASE.vocab))
    selector = MergeSelector(table, budget, min_frequency, plan, banned)
    return selector, selector.run(), table


def encoded_tokens(model, words):
    tok = model.to_tokenizer()
    return sum(n * len(tok.encode(w.replace("▁", " "), add_special_tokens=False).ids) for w, n in words.items())


def test_most_saving_step_first_and_the_tokenizer_cuts_as_simulated():
    _, learned, table = select(budget=6)
    # 당시원 (당시 | 원, 30) and 당뇨병은 (4 pieces, 40) give the most frequent pairs; the
    # characters 폐 and 렴 (3 bytes each, 21 uses) save 42 each, more than any pair.
    assert learned.tokens[:4] == ["렴", "폐", "▁당", "▁당뇨"]
    assert len(learned.tokens) == 6 and learned.saved["폐"] == 42 and learned.sources["폐"] == "char"
    assert list(learned.saved.values()) == sorted(learned.saved.values(), reverse=True)
    model = grow_bpe(BASE, learned).model
    assert encoded_tokens(model, WORDS) == table.total_tokens() < encoded_tokens(BASE, WORDS)


def test_no_budget_no_tokens_and_pairs_below_min_frequency_are_left():
    assert select(budget=0)[1].tokens == []
    _, learned, _ = select(budget=100, min_frequency=13)
    assert "▁원시" not in learned.tokens and "▁폐렴" not in learned.tokens
    assert "▁당뇨병은" in learned.tokens and "당시원" in learned.tokens


def test_a_merge_into_a_base_token_costs_no_id():
    # 원시 is a base token the base never forms from 원 | 시 (it has no such merge).
    base_words = Counter({"원시": 50, "당뇨": 5})
    from test_extend import tiny_base

    base = tiny_base(["원", "시", "원시", "당", "뇨"], [])
    table = WordTable(base_words, base.to_tokenizer(), dict(base.vocab))
    learned = MergeSelector(table, 1).run()
    assert learned.merges[0] == ("원", "시") and learned.free_merges == 1
    assert learned.tokens == ["당뇨"]
    assert pieces(grow_bpe(base, learned).model, "원시 당뇨") == ["원시", "▁", "당뇨"]


def test_required_terms_become_one_token_and_their_budget_is_held_back():
    words = WORDS + Counter({"▁폐렴구균은": 3})
    plan = TermPlan.from_corpus(["▁폐렴구균", "▁없는말"], words, required_from=3, priority=1.0)
    assert plan.frequency == {"▁폐렴구균": 3, "▁없는말": 0} and plan.required() == ["▁폐렴구균"]
    _, plain, plain_table = select(words, budget=12)
    assert "▁폐렴구균" not in plain.tokens  # three uses: the corpus has better pairs
    _, learned, table = select(words, budget=12, plan=plan)
    assert len(learned.tokens) == 12 and learned.sources["▁폐렴구균"] == "term"
    assert pieces(grow_bpe(BASE, learned).model, " 폐렴구균") == ["▁폐렴구균"]
    # The corpus's best merges come first; the term takes only the budget held back for it.
    assert learned.tokens[:6] == plain.tokens[:6] and "▁없는말" not in learned.tokens
    assert set(learned.tokens[6:]) == {"구", "균", "폐렴", "▁폐렴", "▁폐렴구", "▁폐렴구균"}
    assert plain_table.total_tokens() == 106 and table.total_tokens() == 112  # of 415 with the base
    # With the whole budget needed by the term, it is all the term gets.
    assert select(words, budget=8, plan=plan)[1].tokens[-1] == "▁폐렴구균"


def test_other_terms_compete_by_what_they_save_times_the_priority():
    words = WORDS + Counter({"▁폐렴구균은": 2})
    low = TermPlan.from_corpus(["▁폐렴구균"], words, required_from=5, priority=1.0)
    high = TermPlan.from_corpus(["▁폐렴구균"], words, required_from=5, priority=30.0)
    assert "▁폐렴구균" not in select(words, budget=8, plan=low)[1].tokens
    assert select(words, budget=8, plan=high)[1].sources.get("▁폐렴구균") == "term"


def test_required_terms_that_do_not_fit_are_refused_with_the_fix():
    plan = TermPlan({"▁폐렴구균": 3, "▁심근경색": 4}, required_from=3)
    with pytest.raises(TermBudgetError, match=r"2 of the 2 terms seen at least 3 times do not fit into "
                                              r"--num_new_tokens 3 \(they need about 16 more tokens\): raise "
                                              r"--num_new_tokens or --term_min_frequency"):
        select(budget=3, plan=plan)


def test_the_term_frequencies_that_fit_start_at_the_smallest_whose_terms_fit_the_budget():
    plan = TermPlan({"▁폐렴구균": 3, "▁심근경색": 4}, required_from=3)
    table = WordTable(WORDS, BASE.to_tokenizer(), dict(BASE.vocab))
    assert MergeSelector(table, 8, 2, plan).fitting_frequencies() == [4, 5]  # both need 16, 심근경색 alone 8
    assert MergeSelector(table, 16, 2, plan).fitting_frequencies() == [3, 4, 5]
    assert MergeSelector(table, 3, 2, plan).fitting_frequencies() == [5]  # none fits: no term required
    learned = select(budget=8, plan=TermPlan(plan.frequency, required_from=4))[1]
    assert learned.sources["▁심근경색"] == "term" and "▁폐렴구균" not in learned.tokens


def test_prefix_counts_count_word_starts():
    words = Counter({"▁당뇨병은": 3, "▁당뇨병": 2, "당뇨병": 7, "▁당뇨": 1})
    assert prefix_counts(words, ["▁당뇨병", "▁당"]) == Counter({"▁당뇨병": 5, "▁당": 6})
