"""The shipped demo extension: made by `scripts/make_demo_tokenizer.py` from the demo base."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from medkor.vocab.corpus import read_documents

DEMO = Path(__file__).resolve().parents[2] / "medkor" / "assets" / "demo"
EXT, BASE = DEMO / "tokenizer-extended", DEMO / "tiny-gemma3"

pytestmark = pytest.mark.skipif(not (EXT / "tokenizer.json").is_file(), reason="demo assets not built")


def test_demo_extension_keeps_base_ids_round_trips_and_is_small():
    base, ext = AutoTokenizer.from_pretrained(str(BASE)), AutoTokenizer.from_pretrained(str(EXT))
    stats = json.loads((EXT / "extension_stats.json").read_text(encoding="utf-8"))
    base_vocab, ext_vocab = base.get_vocab(), ext.get_vocab()
    assert all(ext_vocab[t] == i for t, i in base_vocab.items())
    assert len(ext) == len(base) + stats["tokens_added"] and 300 <= stats["tokens_added"] <= 600
    assert sorted(i for t, i in ext_vocab.items() if t not in base_vocab) == list(range(len(base), len(ext)))
    for doc in read_documents([DEMO / "data" / "validation.jsonl"]):
        assert ext.decode(ext(doc, add_special_tokens=False)["input_ids"]) == doc
    assert stats["heldout"]["tokens_per_1k_chars"]["extended"] <= stats["heldout"]["tokens_per_1k_chars"]["base"]
    assert sum(f.stat().st_size for f in EXT.iterdir()) < 1.5 * 2**20
    assert not (EXT / "tokenizer.model").exists()
