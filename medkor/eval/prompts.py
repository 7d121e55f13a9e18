"""KorMedMCQA prompts: the lm-evaluation-harness text, few-shot examples, and a chat-template variant.

``harness`` (default) is the lm-evaluation-harness ``kormedmcqa`` prompt, character for character::

    {question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nE. {E}\\n정답：

(the colon is the full-width U+FF1A). Few-shot examples are the first ``n`` questions of the
``fewshot`` split, each written as the same text followed by `` {letter}\\n\\n``. The string is
tokenized with the tokenizer's special tokens (Gemma: a leading ``<bos>``).

``chat`` wraps the same text in the tokenizer's chat template as a user turn, with few-shot
examples as earlier user/model turns, and ends with the generation prompt (Gemma:
``<start_of_turn>model\\n``). The rendered string already holds ``<bos>``, so it is tokenized
without adding special tokens again.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from medkor.eval.questions import LETTERS, Question

PromptStyle = Literal["harness", "chat"]
PROMPT_STYLES: tuple[str, ...] = ("harness", "chat")
ANSWER_CUE = "정답："  # full-width colon, as in the harness


def question_text(question: Question) -> str:
    """The harness text of one question, ending with ``정답：``."""
    lines = [question.question.strip()]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, question.options)]
    return "\n".join(lines) + "\n" + ANSWER_CUE


def harness_prompt(question: Question, shots: Sequence[Question] = ()) -> str:
    """Few-shot examples (`` {letter}\\n\\n`` after each) followed by the question's harness text."""
    examples = "".join(f"{question_text(shot)} {shot.answer}\n\n" for shot in shots)
    return examples + question_text(question)


def chat_prompt(question: Question, tokenizer: Any, shots: Sequence[Question] = ()) -> str:
    """The question as the last user turn of the tokenizer's chat template, few-shot turns before it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt='chat' needs a tokenizer with a chat template; use prompt='harness' for this tokenizer")
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages.append({"role": "user", "content": question_text(shot)})
        messages.append({"role": "assistant", "content": shot.answer})
    messages.append({"role": "user", "content": question_text(question)})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt(question: Question, style: PromptStyle, tokenizer: Any, shots: Sequence[Question] = ()) -> str:
    """The exact prompt string for ``style`` (``harness`` or ``chat``)."""
    if style == "harness":
        return harness_prompt(question, shots)
    if style == "chat":
        return chat_prompt(question, tokenizer, shots)
    raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(PROMPT_STYLES)}")


def adds_special_tokens(style: PromptStyle) -> bool:
    """Whether the prompt string is tokenized with special tokens (the chat template writes its own)."""
    return style == "harness"


def answer_spellings(style: PromptStyle) -> tuple[str, ...]:
    """How a letter may follow the prompt, most natural first (``{}`` is the letter).

    After ``정답：`` the harness's own few-shot examples write `` A`` (space, letter); after a chat
    generation prompt the reply starts with the bare letter. The scorer takes the first spelling
    that the tokenizer turns into exactly one extra token after the prompt's own tokens.
    """
    return (" {}", "{}") if style == "harness" else ("{}", " {}")
