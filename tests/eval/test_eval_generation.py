import pytest
import torch

from medkor.eval.encoding import encode_questions
from medkor.eval.generation import HARNESS_STOP, cut_at_stops, extract_choice, generate_texts, stop_token_ids
from medkor.eval.predictions import generate_records
from medkor.eval.questions import load_questions


@pytest.mark.parametrize(
    "text, letter",
    [
        (" B", "B"),
        ("정답: C 그리고 정답： D", "C"),  # pattern 1 takes ASCII colon/space only: 정답： D does not match it
        ("정답 A 그리고 정답: E", "E"),  # last match of the first matching pattern
        ("정답은 B입니다", "B"),
        ("설명 A. 틀림 C. 맞음", "C"),
        ("I think b", "B"),  # case-insensitive, as the harness
        ("ABC", None),
        ("", None),
    ],
)
def test_extraction_cascade(text, letter):
    assert extract_choice(text) == letter


def test_stop_strings_cut_the_text():
    assert cut_at_stops(" C. 설명") == " C"
    assert cut_at_stops("A\n\nQ: 다음") == "A"
    assert HARNESS_STOP == ("Q:", "</s>", "<|im_end|>", ".", "\n\n")


def test_stop_ids_include_end_of_turn(tokenizer, model):
    assert stop_token_ids(tokenizer, model) == sorted({1, tokenizer.convert_tokens_to_ids("<end_of_turn>")})


def test_batched_generation_equals_batch_one_greedy(model, tokenizer, sample_dir):
    questions = [q for items in load_questions(sample_dir, max_samples=1).values() for q in items]
    encoded = encode_questions(questions, tokenizer, "harness", find_letters=False)
    batched = generate_texts(model, tokenizer, encoded, batch_size=4, max_new_tokens=8, stops=())
    for item, text in zip(encoded, batched):
        with torch.no_grad():
            out = model.generate(
                torch.tensor([item.prompt_ids]), max_new_tokens=8, do_sample=False, eos_token_id=stop_token_ids(tokenizer, model), pad_token_id=0
            )
        assert text == tokenizer.decode(out[0, len(item.prompt_ids) :], skip_special_tokens=True)
    assert any(len(t) > 0 for t in batched)
    records = generate_records(encoded, [" C. 이유", "정답은 E입니다"] * 2)
    assert [r["pred"] for r in records[:2]] == ["C", "E"] and records[0]["logprobs"] is None
