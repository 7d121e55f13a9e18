"""Prompt strings -> token ids, and the token id of each answer letter after the prompt.

A letter is scored as the single next token after the prompt. Which token that is depends on
the tokenizer: a Gemma-style tokenizer writes `` A`` as ``▁A`` and ``A`` as ``A``, and a merge could
even swallow the prompt's last character. So for every question we tokenize ``prompt + letter``
for each spelling of :func:`medkor.eval.prompts.answer_spellings` and keep the first spelling
whose tokens are exactly the prompt's tokens plus one token per letter, five distinct tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from medkor.eval.prompts import PromptStyle, adds_special_tokens, answer_spellings, build_prompt
from medkor.eval.questions import LETTERS, Question


@dataclass(frozen=True)
class EncodedQuestion:
    """A question with the exact prompt string and ids the model receives.

    Attributes:
        question: the question.
        prompt: the exact prompt string.
        prompt_ids: token ids of ``prompt`` (what the model receives).
        letter_ids: token id of A..E as the next token after ``prompt_ids``.
        spelling: how the letter follows the prompt (``" {}"`` or ``"{}"``).
    """

    question: Question
    prompt: str
    prompt_ids: tuple[int, ...]
    letter_ids: tuple[int, int, int, int, int]
    spelling: str


def _ids(tokenizer: Any, texts: Sequence[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def encode_questions(
    questions: Sequence[Question],
    tokenizer: Any,
    style: PromptStyle = "harness",
    shots: Mapping[str, Sequence[Question]] | None = None,
    find_letters: bool = True,
) -> list[EncodedQuestion]:
    """Build and tokenize every prompt and find its letter tokens.

    Args:
        questions: questions to encode.
        tokenizer: a Hugging Face tokenizer (fast or slow).
        style: ``harness`` or ``chat`` (see :mod:`medkor.eval.prompts`).
        shots: few-shot examples by subset (already cut to ``num_fewshot``); none by default.
        find_letters: look up the letter tokens (``logprob`` scoring needs them, ``generate`` not:
            then ``letter_ids`` is empty).
    """
    shots = shots or {}
    special = adds_special_tokens(style)
    prompts = [build_prompt(q, style, tokenizer, shots.get(q.subset, ())) for q in questions]
    prompt_ids = _ids(tokenizer, prompts, special)
    chosen: list[tuple[str, tuple[int, ...]] | None] = [None] * len(questions)
    if not find_letters:
        chosen = [("", ())] * len(questions)
    for spelling in answer_spellings(style):
        todo = [i for i, found in enumerate(chosen) if found is None]
        if not todo:
            break
        texts = [prompts[i] + spelling.format(letter) for i in todo for letter in LETTERS]
        with_letter = _ids(tokenizer, texts, special)
        for k, i in enumerate(todo):
            base = prompt_ids[i]
            letter_ids = []
            for ids in with_letter[5 * k : 5 * k + 5]:
                if len(ids) != len(base) + 1 or ids[: len(base)] != base:
                    break
                letter_ids.append(ids[-1])
            if len(letter_ids) == 5 and len(set(letter_ids)) == 5:
                chosen[i] = (spelling, tuple(letter_ids))
    out = []
    for i, question in enumerate(questions):
        if chosen[i] is None:
            tried = ", ".join(repr(s.format("A")) for s in answer_spellings(style))
            raise ValueError(
                f"{question.where or question.subset}: no spelling of the answer letters ({tried}) is a single token "
                f"after this prompt with this tokenizer; use scoring='generate' or a tokenizer with letter tokens"
            )
        spelling, letter_ids = chosen[i]  # type: ignore[misc]
        out.append(EncodedQuestion(question, prompts[i], tuple(prompt_ids[i]), letter_ids, spelling))  # type: ignore[arg-type]
    return out
