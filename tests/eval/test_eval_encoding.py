import pytest

from medkor.eval.encoding import encode_questions
from medkor.eval.questions import LETTERS, load_questions


def test_letter_after_space_is_one_metaspace_token(tokenizer, sample_dir):
    questions = load_questions(sample_dir)["doctor"]
    encoded = encode_questions(questions, tokenizer, "harness")
    expected = tuple(tokenizer.convert_tokens_to_ids(f"▁{x}") for x in LETTERS)
    for item in encoded:
        assert item.spelling == " {}"
        assert item.letter_ids == expected
        assert item.prompt_ids[0] == tokenizer.bos_token_id and item.prompt_ids.count(tokenizer.bos_token_id) == 1
        assert list(item.prompt_ids) == tokenizer(item.prompt)["input_ids"]
        full = tokenizer(item.prompt + " C")["input_ids"]
        assert full == list(item.prompt_ids) + [item.letter_ids[2]]


def test_bare_letter_when_the_space_would_be_its_own_token(tokenizer_no_space_letters, sample_dir):
    questions = load_questions(sample_dir)["nurse"]
    encoded = encode_questions(questions, tokenizer_no_space_letters, "harness")
    assert {item.spelling for item in encoded} == {"{}"}
    assert encoded[0].letter_ids == tuple(tokenizer_no_space_letters.convert_tokens_to_ids(x) for x in LETTERS)


def test_chat_prompt_has_one_bos_and_bare_letters(tokenizer, sample_dir):
    questions = load_questions(sample_dir)["pharm"]
    shots = load_questions(sample_dir, split="fewshot")
    encoded = encode_questions(questions, tokenizer, "chat", {k: v[:2] for k, v in shots.items()})
    item = encoded[0]
    assert item.prompt.endswith("<start_of_turn>model\n") and item.prompt.count("<start_of_turn>user") == 3
    assert item.prompt_ids.count(tokenizer.bos_token_id) == 1
    assert item.spelling == "{}"


class _SplittingTokenizer:
    """Spells every letter as two tokens, so no spelling can be scored as one next token."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[ord(c) for c in t] + ([0] if t[-1] in LETTERS else []) for t in texts]}


def test_no_single_token_spelling_is_a_clear_error(sample_dir):
    questions = load_questions(sample_dir)["dentist"]
    with pytest.raises(ValueError, match=r"dentist/test\.jsonl:1: no spelling of the answer letters"):
        encode_questions(questions, _SplittingTokenizer(), "harness")
    assert encode_questions(questions, _SplittingTokenizer(), "harness", find_letters=False)[0].letter_ids == ()
