from medkor.eval.prompts import build_prompt, harness_prompt, question_text
from medkor.eval.questions import Question


def make(question="  다음 중 옳은 것은?\n", answer="B"):
    return Question("doctor", 0, question, ("가", "나", "다", "라", "마"), answer)


def test_harness_prompt_is_exactly_the_lm_eval_text():
    expected = "다음 중 옳은 것은?\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마\n정답\uff1a"
    assert question_text(make()) == expected
    assert build_prompt(make(), "harness", tokenizer=None) == expected


def test_fewshot_examples_precede_the_question():
    shots = [make("첫 질문", "C"), make("둘째 질문", "E")]
    text = harness_prompt(make(), shots)
    assert text == (
        "첫 질문\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마\n정답： C\n\n"
        "둘째 질문\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마\n정답： E\n\n"
        "다음 중 옳은 것은?\nA. 가\nB. 나\nC. 다\nD. 라\nE. 마\n정답："
    )


def test_chat_prompt_uses_the_template_with_shots_as_turns(tokenizer):
    text = build_prompt(make(), "chat", tokenizer, [make("첫 질문", "D")])
    assert text.startswith("<bos><start_of_turn>user\n첫 질문\nA. 가")
    assert "정답：<end_of_turn>\n<start_of_turn>model\nD<end_of_turn>\n" in text
    assert text.endswith("E. 마\n정답：<end_of_turn>\n<start_of_turn>model\n")
    assert text.count("<bos>") == 1
