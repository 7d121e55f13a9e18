"""medkor: adapt MedGemma (Gemma 3) to Korean medicine with PyTorch Lightning."""

__version__ = "0.1.0"
