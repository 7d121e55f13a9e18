"""Step-0 quality on the demo assets: subword-mean rows keep more of what the base knew than random rows.

The demo model is random-init, so the test first trains it (20 full steps on 8
validation documents, the texts it is then scored on) until it knows which piece
follows which; then it grows the trained checkpoint to the demo's extended tokenizer
through `MedGemmaModule` with each `new_token_init` and scores the same texts in bits
per character. Random rows with other seeds differ by under 0.01 bit/char here, so
the margin asserted (0.03) cannot be met by a random init under another name.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoTokenizer

from medkor.model import MedGemmaModule
from medkor.model.bits_per_char import bits_per_character
from medkor.model.loading import load_model


def _trained_base(model_path, texts, folder, steps=20, length=64, batch=4):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(0)
    model = load_model(str(model_path))
    model.train()
    ids = [t for doc in tokenizer(texts, add_special_tokens=False)["input_ids"]
           for t in [tokenizer.bos_token_id] + doc + [tokenizer.eos_token_id]]
    rows = torch.tensor(ids[: len(ids) // length * length]).view(-1, length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(steps):
        picked = rows[torch.randint(0, len(rows), (batch,))]
        model(input_ids=picked, labels=picked, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_subword_mean_starts_ahead_of_mean_and_random(demo_model_path, demo_extended_tokenizer_path,
                                                     demo_data_dir, tmp_path):
    lines = (demo_data_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines[:8]]
    base = _trained_base(demo_model_path, texts, tmp_path / "base")
    extended = AutoTokenizer.from_pretrained(demo_extended_tokenizer_path)
    base_tokens = sum(map(len, AutoTokenizer.from_pretrained(base)(texts, add_special_tokens=False)["input_ids"]))
    scores = {}
    for init in ("subword_mean", "mean", "random"):
        torch.manual_seed(1)
        module = MedGemmaModule(str(base), str(demo_extended_tokenizer_path), new_token_init=init,
                                trainable="new_embeddings")
        scored = bits_per_character(module.hf_model, extended, texts)
        assert scored.tokens < base_tokens  # the extended tokenizer's new rows are really scored
        scores[init] = scored.bpc
    assert scores["subword_mean"] < min(scores["mean"], scores["random"]) - 0.03, scores
