"""The model: Gemma 3 loading, embedding growth, trainable policies, chunked loss, export.

`MedGemmaModule` is the thin Lightning edge; everything else is plain functions.
"""

from medkor.model.module import MedGemmaModule
from medkor.model.policies import LoraOptions

__all__ = ["MedGemmaModule", "LoraOptions"]
