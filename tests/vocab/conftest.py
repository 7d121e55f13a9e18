"""Fixtures: a Gemma-3-style base tokenizer and a Korean corpus the project has not seen."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gemma_like import NOUNS, korean_sentences, write_gemma_like  # noqa: E402

# The base learns half of the nouns; the corpus uses all of them, so the other half
# (and the inflected forms) are what an extension should pick up.
BASE_NOUNS = NOUNS[::2]


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    texts = korean_sentences(300, seed=11, nouns=BASE_NOUNS)
    return write_gemma_like(texts, tmp_path_factory.mktemp("base") / "tok", vocab_size=500)


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    return korean_sentences(1200, seed=5)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_docs) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in corpus_docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def extended(tmp_path_factory, base_dir, corpus_file):
    """(output folder, stats) of one `extend_vocab` run shared by the end-to-end tests."""
    from medkor.vocab.build import ExtendConfig, extend_vocab

    terms = tmp_path_factory.mktemp("terms") / "terms.txt"
    terms.write_text("갑상선기능저하증\n(만성)간경변\n없는용어\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("ext") / "tokenizer-extended"
    report = extend_vocab(
        ExtendConfig(base=str(base_dir), corpus=[str(corpus_file)], terms=[str(terms)], out=str(out),
                     num_new_tokens=120, min_frequency=3)
    )
    return out, report
