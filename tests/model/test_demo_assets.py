"""The bundled demo model and extended tokenizer go through the same checks."""

from __future__ import annotations

import json

import torch
from transformers import AutoTokenizer

from medkor.model import MedGemmaModule
from medkor.model.loading import load_model


def test_demo_extension_initialises_every_new_row(demo_model_path, demo_extended_tokenizer_path, demo_data_dir):
    original = load_model(str(demo_model_path)).get_input_embeddings().weight.detach()
    base = AutoTokenizer.from_pretrained(demo_model_path)
    module = MedGemmaModule(str(demo_model_path), str(demo_extended_tokenizer_path), trainable="full")
    plan = module.embedding_plan
    weight = module.hf_model.get_input_embeddings().weight.detach()
    assert plan.extended and plan.n_base == len(base) and plan.n_tokenizer == len(module.tokenizer)
    assert weight.shape[0] == plan.rows_after and plan.rows_after % 64 == 0
    assert torch.equal(weight[: plan.n_base], original[: plan.n_base])
    ext = module.tokenizer
    for token_id in range(plan.n_base, plan.n_tokenizer):
        raw = ext.convert_ids_to_tokens(token_id)
        text = " " + raw[1:] if raw.startswith("▁") else ext.decode([token_id])
        pieces = base(text, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(weight[token_id], original[pieces].mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight[plan.n_tokenizer :],
                               original[: plan.n_base].mean(0).expand(plan.rows_after - plan.n_tokenizer, -1),
                               rtol=0, atol=1e-6)
    # The extended tokenizer's pieces reach the new rows on real demo text, and the loss is finite.
    lines = (demo_data_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    encoded = [ext(json.loads(line)["text"])["input_ids"][:128] for line in lines]
    ids = torch.tensor([next(e for e in encoded if max(e) >= plan.n_base)])
    loss, count = module.loss({"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    assert count == ids.shape[1] - 1 and torch.isfinite(loss)
