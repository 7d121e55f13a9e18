"""Trainable policies: what trains, what never does, and the log line."""

from __future__ import annotations

import re

import pytest
import torch

from medkor.model import MedGemmaModule
from medkor.model.optim import build_optimizer, param_groups
from medkor.model.policies import LoraOptions, count_parameters


def _module(assets, kind="text", **kw):
    return MedGemmaModule(str(assets[kind]), str(assets["ext_tok"]), **kw)


def _batch(module):
    enc = module.tokenizer([" 당뇨병성 신경병증 심근경색 <dx>", " 항생제는 부작용을 고혈압은 활력"], padding=True,
                           return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": enc["input_ids"]}


def _steps(module, n=3, weight_decay=0.1):
    groups = param_groups(module.model, learning_rate=1e-2, weight_decay=weight_decay,
                          embedding_params=module._policy.embedding_params, decay_exempt=module._policy.decay_exempt)
    optimizer = build_optimizer(groups)
    for _ in range(n):
        loss, _ = module.loss(_batch(module))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_new_embeddings_moves_only_new_rows(assets):
    module = _module(assets, trainable="new_embeddings")
    n_base = module.embedding_plan.n_base
    emb = module.hf_model.get_input_embeddings().weight
    before = {k: v.detach().clone() for k, v in module.hf_model.state_dict().items()}
    _steps(module)
    after = module.hf_model.state_dict()
    assert torch.equal(emb[:n_base], before["model.embed_tokens.weight"][:n_base])  # bit-identical
    moved = (emb[n_base:] - before["model.embed_tokens.weight"][n_base:]).abs().sum(1) > 0
    used = set(_batch(module)["input_ids"].flatten().tolist())
    assert all(moved[i - n_base] for i in used if i >= n_base)
    for key, value in after.items():
        if "embed_tokens" not in key and "lm_head" not in key:
            assert torch.equal(value, before[key]), key


def test_new_embeddings_without_new_tokens_is_refused(assets):
    with pytest.raises(ValueError, match="no token"):
        MedGemmaModule(str(assets["text"]), trainable="new_embeddings")


@pytest.mark.parametrize("kind", ["text", "multimodal"])
@pytest.mark.parametrize("policy", ["embeddings", "embeddings+lora", "lora", "full"])
def test_policy_trains_the_right_parameters(assets, kind, policy):
    module = _module(assets, kind, trainable=policy, lora=LoraOptions(r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in trainable)
    has_lora = any("lora_" in n for n in trainable)
    has_embed = any("embed_tokens" in n for n in trainable)
    assert has_lora == (policy in ("lora", "embeddings+lora"))
    assert has_embed == (policy != "lora")
    if policy == "embeddings":
        assert all("embed_tokens" in n for n in trainable)
    if policy == "full":
        assert any("mlp.down_proj" in n for n in trainable)
    if kind == "multimodal":
        assert not any("lora_" in n for n, _ in module.model.named_parameters() if "vision_tower" in n)
    # One step moves trainable parameters and nothing else.
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _steps(module, n=1, weight_decay=0.0)
    for name, param in module.model.named_parameters():
        changed = not torch.equal(param, before[name])
        if name not in trainable:
            assert not changed, name
    assert any(not torch.equal(p, before[n]) for n, p in module.model.named_parameters() if n in trainable)


def test_untied_embeddings_policy_trains_the_head_too(assets):
    module = MedGemmaModule(str(assets["untied"]), str(assets["ext_tok"]), trainable="embeddings")
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == {"model.embed_tokens.weight", "lm_head.weight"}


def test_trainable_summary_line(assets):
    module = _module(assets, trainable="embeddings")
    trainable, total = count_parameters(module.model)
    assert re.fullmatch(r"Trainable params: [\d,]+ \(\d+\.\d\d%\)", module.trainable_summary)
    assert f"{trainable:,}" in module.trainable_summary
    assert trainable == module.hf_model.get_input_embeddings().weight.numel()
    assert f"({100 * trainable / total:.2f}%)" in module.trainable_summary


def test_unknown_policy_is_refused(assets):
    with pytest.raises(ValueError, match="not one of"):
        _module(assets, trainable="everything")


def test_half_precision_base_keeps_trainable_parameters_in_float32(assets):
    module = _module(assets, "multimodal", trainable="embeddings+lora", torch_dtype="bfloat16",
                     lora=LoraOptions(r=4, alpha=8, dropout=0.0))
    dtypes = {n: p.dtype for n, p in module.model.named_parameters()}
    assert all(dtypes[n] == torch.float32 for n, p in module.model.named_parameters() if p.requires_grad)
    assert any(d == torch.bfloat16 for d in dtypes.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = module.loss(_batch(module))
    loss.backward()
    grad = module.hf_model.get_input_embeddings().weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(loss)
