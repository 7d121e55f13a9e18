"""Lightning callbacks of medkor."""

from medkor.callbacks.finite_guard import NonFiniteGuard
from medkor.callbacks.forgetting import ForgettingGuard
from medkor.callbacks.kormedmcqa import KorMedMCQAEval

__all__ = ["ForgettingGuard", "KorMedMCQAEval", "NonFiniteGuard"]
