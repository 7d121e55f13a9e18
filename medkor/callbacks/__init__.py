"""Lightning callbacks of medkor."""

from medkor.callbacks.kormedmcqa import KorMedMCQAEval

__all__ = ["KorMedMCQAEval"]
