"""Shared fixtures: paths of the embedded demo assets (built by scripts/, shipped in the package)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "medkor" / "assets" / "demo"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """Tiny random-init Gemma3ForCausalLM with its base tokenizer."""
    return DEMO / "tiny-gemma3"


@pytest.fixture(scope="session")
def demo_extended_tokenizer_path() -> Path:
    """The base tokenizer extended with Korean medical tokens."""
    return DEMO / "tokenizer-extended"


@pytest.fixture(scope="session")
def demo_data_dir() -> Path:
    """train.jsonl and validation.jsonl, field `text`."""
    return DEMO / "data"


@pytest.fixture(scope="session")
def demo_kormedmcqa_dir() -> Path:
    """<subset>/{test,fewshot}.jsonl in the KorMedMCQA hub schema."""
    return DEMO / "kormedmcqa"
