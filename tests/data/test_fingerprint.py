"""Tokenizer fingerprints of hub ids: remembered by the cached snapshot's files, not reloaded."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import constants
from transformers import AutoTokenizer

from medkor.data.fingerprint import FingerprintMemo, hub_snapshot, tokenizer_fingerprint, tokenizer_state

REPO = "medkor-test/tiny-tokenizer"


def _cache_snapshot(hub_cache, tokenizer_dir, sha: str):
    """Lay out a Hugging Face hub cache entry for REPO at commit `sha`, made `main`."""
    repo = hub_cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    shutil.copytree(tokenizer_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_is_hashed_once_then_remembered_by_its_snapshot(offline_hub, tokenizer_dir, tmp_path, monkeypatch):
    snapshot = _cache_snapshot(offline_hub, tokenizer_dir, "a" * 40)
    assert hub_snapshot(REPO) == snapshot
    loads = []

    def load():
        loads.append(1)
        return AutoTokenizer.from_pretrained(snapshot)

    memo = FingerprintMemo(tmp_path / "memo")
    # the snapshot was written a moment ago; in real use it is older than the window in
    # which a hash is not trusted to be remembered
    monkeypatch.setattr("medkor.data.fingerprint._RACY_NS", 0)
    state = tokenizer_fingerprint(REPO, memo, load)
    assert state == tokenizer_state(AutoTokenizer.from_pretrained(tokenizer_dir)) and len(loads) == 1
    assert tokenizer_fingerprint(REPO, memo, load) == state and len(loads) == 1  # not loaded again


def test_a_new_commit_is_a_new_snapshot(offline_hub, tokenizer_dir, other_tokenizer_dir, tmp_path):
    _cache_snapshot(offline_hub, tokenizer_dir, "a" * 40)
    memo = FingerprintMemo(tmp_path / "memo")
    first = tokenizer_fingerprint(REPO, memo, lambda: AutoTokenizer.from_pretrained(hub_snapshot(REPO)))
    newer = _cache_snapshot(offline_hub, other_tokenizer_dir, "b" * 40)  # main moves to another tokenizer
    assert hub_snapshot(REPO) == newer
    second = tokenizer_fingerprint(REPO, memo, lambda: AutoTokenizer.from_pretrained(hub_snapshot(REPO)))
    assert first != second


def test_uncached_hub_id_is_loaded_to_be_hashed(offline_hub, tokenizer_dir):
    assert hub_snapshot(REPO) is None
    state = tokenizer_fingerprint(REPO, FingerprintMemo(None), lambda: AutoTokenizer.from_pretrained(tokenizer_dir))
    assert state == tokenizer_state(AutoTokenizer.from_pretrained(tokenizer_dir))
    assert hub_snapshot(str(tokenizer_dir)) is None  # a local folder is never looked up on the hub
