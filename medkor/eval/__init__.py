"""KorMedMCQA evaluation as plain code: questions, prompts, scoring, predictions, plots.

Nothing here imports Lightning; ``medkor.callbacks.KorMedMCQAEval`` is the Lightning edge.
"""

from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator
from medkor.eval.questions import LETTERS, SUBSETS, Question, QuestionError, load_questions

__all__ = ["EvalSettings", "KorMedMCQAEvaluator", "LETTERS", "SUBSETS", "Question", "QuestionError", "load_questions"]
