"""``generate`` scoring as lm-evaluation-harness does it: greedy, its stop strings, its extraction.

The harness generates greedily until one of ``HARNESS_STOP`` appears (or the end-of-sequence
token), cuts the text at the first occurrence of each stop string, then extracts a letter with a
cascade of patterns: the first pattern with a match wins and its last match is the answer; no
match scores wrong. Useful to compare with published numbers; much slower than ``logprob``.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Optional, Sequence

import torch

from medkor.eval.encoding import EncodedQuestion
from medkor.eval.scoring import length_sorted_batches, model_device

HARNESS_STOP: tuple[str, ...] = ("Q:", "</s>", "<|im_end|>", ".", "\n\n")
CHOICE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (r"정답[:\s]*([ABCDE])", r"정답은\s*([ABCDE])\s*입니다", r"\b([ABCDE])\.", r"\b([ABCDE])\b")
)
_STOP_TAIL_TOKENS = 16  # a stop string is at most 10 characters: 16 tokens surely cover it


def extract_choice(text: str) -> Optional[str]:
    """The answer letter of a generation, by the harness cascade; ``None`` when nothing matches."""
    for pattern in CHOICE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    return None


def cut_at_stops(text: str, stops: Sequence[str] = HARNESS_STOP) -> str:
    """The text before the first occurrence of each stop string, applied in turn."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


def stop_token_ids(tokenizer: Any, model: torch.nn.Module) -> list[int]:
    """End-of-sequence ids: the tokenizer's and model's eos plus Gemma's ``<end_of_turn>``."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>") if "<end_of_turn>" in tokenizer.get_vocab() else None
    if end_of_turn is not None:
        ids.add(end_of_turn)
    return sorted(ids)


class _StopOnStrings:
    """Stopping criterion: a row is done once its new text holds a stop string."""

    def __init__(self, tokenizer: Any, prompt_width: int, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.stops = [stop for stop in stops if stop]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        tails = input_ids[:, self.prompt_width :][:, -_STOP_TAIL_TOKENS:].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts], device=input_ids.device)


def generate_texts(
    model: Any,
    tokenizer: Any,
    encoded: Sequence[EncodedQuestion],
    batch_size: int = 8,
    max_new_tokens: int = 1024,
    stops: Sequence[str] = HARNESS_STOP,
    forward_context: Callable[[], ContextManager[Any]] = nullcontext,
    progress: Callable[[list[list[int]]], Iterable[list[int]]] = iter,
) -> list[str]:
    """Greedy continuations of every prompt, cut at the stop strings, in input order.

    Rows are left-padded (generation appends on the right); ``generate`` derives position ids
    from the attention mask, so padding does not shift positions.
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_token_ids(tokenizer, model),
        pad_token_id=pad_id,
        use_cache=True,  # the training config may disable the cache; decoding without it is quadratic
    )
    texts: list[str] = [""] * len(encoded)
    for batch in progress(length_sorted_batches([len(e.prompt_ids) for e in encoded], batch_size)):
        width = max(len(encoded[i].prompt_ids) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = encoded[i].prompt_ids
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        criteria = StoppingCriteriaList([_StopOnStrings(tokenizer, width, stops)])
        with torch.no_grad(), forward_context():
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                stopping_criteria=criteria,
            )
        new_tokens = output[:, width:].tolist()
        for row, i in enumerate(batch):
            texts[i] = cut_at_stops(tokenizer.decode(new_tokens[row], skip_special_tokens=True), stops)
    return texts
