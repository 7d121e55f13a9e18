"""Lightning callbacks of medkor."""

from medkor.callbacks.finite_guard import NonFiniteGuard
from medkor.callbacks.forgetting import ForgettingGuard, MixtureMetrics
from medkor.callbacks.kormedmcqa import KorMedMCQAEval

__all__ = ["ForgettingGuard", "KorMedMCQAEval", "MixtureMetrics", "NonFiniteGuard"]
