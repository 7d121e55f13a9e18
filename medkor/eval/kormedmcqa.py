"""The KorMedMCQA evaluation as a plain object: questions in, prediction records out.

:class:`KorMedMCQAEvaluator` loads the questions once, tokenizes them once per tokenizer, and
scores a rank's share with ``logprob`` or ``generate``. It knows nothing of Lightning; the
callback (``medkor.callbacks.KorMedMCQAEval``) adds the hooks, syncing and logging, and scripts
can call :meth:`KorMedMCQAEvaluator.evaluate` directly.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator, Literal, Optional

import torch

from medkor.eval.distributed import shard
from medkor.eval.encoding import EncodedQuestion, encode_questions
from medkor.eval.generation import generate_texts
from medkor.eval.predictions import generate_records, logprob_records
from medkor.eval.prompts import PROMPT_STYLES, PromptStyle
from medkor.eval.questions import HUB_ID, SUBSETS, Question, QuestionError, QuestionSet, load_question_set, load_questions
from medkor.eval.scoring import score_logprob

Scoring = Literal["logprob", "generate"]


PROGRESS_MIN_BATCHES = 8  # fewer batches take a moment: no bar


@dataclass
class EvalSettings:
    """What to evaluate and how (the callback's options, minus its scheduling).

    Attributes:
        source: hub id or local folder/file in the hub schema.
        subsets: subsets to evaluate (default all four).
        split: split to evaluate.
        max_samples: first questions per subset to keep (default all).
        num_fewshot: worked examples from the ``fewshot`` split before each question.
        prompt: ``harness`` or ``chat``.
        scoring: ``logprob`` or ``generate``.
        batch_size: questions per forward pass (or per ``generate`` call).
        max_new_tokens: generation budget per question (``generate`` only).
    """

    source: str = HUB_ID
    subsets: Optional[list[str]] = None
    split: str = "test"
    max_samples: Optional[int] = None
    num_fewshot: int = 0
    prompt: PromptStyle = "harness"
    scoring: Scoring = "logprob"
    batch_size: int = 16
    max_new_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt!r}")
        if self.scoring not in ("logprob", "generate"):
            raise ValueError(f"scoring must be 'logprob' or 'generate', got {self.scoring!r}")
        if self.num_fewshot < 0 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_fewshot must be >= 0, batch_size and max_new_tokens >= 1")
        if self.subsets is not None:
            unknown = [s for s in self.subsets if s not in SUBSETS]
            if unknown or not self.subsets:
                raise ValueError(f"unknown subset(s) {unknown or self.subsets}; choose from {', '.join(SUBSETS)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no dropout, no gradient checkpointing); the old mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class KorMedMCQAEvaluator:
    """Scores KorMedMCQA questions with a causal LM.

    Args:
        settings: what to evaluate and how.
    """

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        self._set: Optional[QuestionSet] = None
        self._shots: Optional[dict[str, list[Question]]] = None
        self._encoded: Optional[tuple[tuple[int, int], list[EncodedQuestion]]] = None

    @property
    def question_set(self) -> QuestionSet:
        """The questions and what loading found (repeats dropped, files read); loaded on first use."""
        if self._set is None:
            s = self.settings
            loaded = load_question_set(s.source, s.subsets, s.split, s.max_samples)
            self._shots = self._load_shots(list(loaded.questions))
            self._set = loaded
        return self._set

    @property
    def questions(self) -> dict[str, list[Question]]:
        """Questions by subset, each once (loaded on first use)."""
        return self.question_set.questions

    @property
    def subsets(self) -> list[str]:
        return list(self.questions)

    def _load_shots(self, subsets: list[str]) -> dict[str, list[Question]]:
        n = self.settings.num_fewshot
        if n == 0:
            return {}
        shots = load_questions(self.settings.source, subsets, "fewshot")
        for subset, items in shots.items():
            if len(items) < n:
                raise QuestionError(
                    f"{self.settings.source}: subset {subset!r} has {len(items)} fewshot examples, num_fewshot={n}"
                )
        return {subset: items[:n] for subset, items in shots.items()}

    def encoded(self, tokenizer: Any) -> list[EncodedQuestion]:
        """Every question's prompt and ids for this tokenizer (cached per tokenizer object and size)."""
        key = (id(tokenizer), len(tokenizer))
        if self._encoded is None or self._encoded[0] != key:
            flat = [q for items in self.questions.values() for q in items]
            items = encode_questions(
                flat,
                tokenizer,
                self.settings.prompt,
                self._shots,
                find_letters=self.settings.scoring == "logprob",
            )
            self._encoded = (key, items)
        return self._encoded[1]

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        rank: int = 0,
        world_size: int = 1,
        forward_context: Callable[[], ContextManager[Any]] = nullcontext,
    ) -> list[dict[str, Any]]:
        """Prediction records of this rank's share of the questions (all of them for one process).

        The model is put in eval mode and restored; no gradients are recorded.
        """
        items = self.encoded(tokenizer)
        mine = shard(items, rank, world_size, lengths=[len(e.prompt_ids) for e in items])
        s = self.settings

        def progress(batches: list[list[int]]) -> Iterable[list[int]]:
            # a bar on rank zero for evaluations long enough to wait for; gone once done
            from tqdm.auto import tqdm

            return tqdm(batches, desc=f"KorMedMCQA {len(mine)} questions", unit="batch", leave=False,
                        disable=rank != 0 or len(batches) < PROGRESS_MIN_BATCHES, dynamic_ncols=True)

        with eval_mode(model):
            if s.scoring == "logprob":
                scores = score_logprob(model, mine, s.batch_size, forward_context, progress=progress)
                return logprob_records(mine, scores)
            texts = generate_texts(model, tokenizer, mine, s.batch_size, s.max_new_tokens,
                                   forward_context=forward_context, progress=progress)
            return generate_records(mine, texts)
