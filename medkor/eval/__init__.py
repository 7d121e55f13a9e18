"""KorMedMCQA evaluation as plain code: questions, prompts, scoring, predictions, plots.

Nothing here imports Lightning; ``medkor.callbacks.KorMedMCQAEval`` is the Lightning edge.
Names are imported on first use, so `medkor.eval.questions` or `medkor.eval.plot` load
without torch.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "EvalSettings": "medkor.eval.kormedmcqa",
    "KorMedMCQAEvaluator": "medkor.eval.kormedmcqa",
    "LETTERS": "medkor.eval.questions",
    "SUBSETS": "medkor.eval.questions",
    "Question": "medkor.eval.questions",
    "QuestionError": "medkor.eval.questions",
    "load_questions": "medkor.eval.questions",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'medkor.eval' has no attribute {name!r}")
