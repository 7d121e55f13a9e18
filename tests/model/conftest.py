"""Session-wide tiny checkpoints and tokenizers (built once, a second or two)."""

from __future__ import annotations

from pathlib import Path

import pytest

import model_builders as builders


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("model-assets")
    builders.train_base_tokenizer(root / "base-tok")
    builders.extend_tokenizer(root / "base-tok", root / "ext-tok")
    builders.extend_tokenizer(root / "base-tok", root / "big-ext-tok", added=[f"혈당{i}" for i in range(100)])
    builders.train_base_tokenizer(root / "other-tok", vocab_size=400)
    return {
        "base_tok": root / "base-tok",
        "ext_tok": root / "ext-tok",
        "big_ext_tok": root / "big-ext-tok",
        "other_tok": root / "other-tok",
        "text": builders.save_text_model(root / "text", root / "base-tok"),
        "untied": builders.save_text_model(root / "untied", root / "base-tok", tie=False),
        "multimodal": builders.save_multimodal_model(root / "mm", root / "base-tok"),
        "root": root,
    }
