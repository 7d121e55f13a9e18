"""Lightning callbacks of medkor."""

from medkor.callbacks.finite_guard import NonFiniteGuard
from medkor.callbacks.kormedmcqa import KorMedMCQAEval

__all__ = ["KorMedMCQAEval", "NonFiniteGuard"]
