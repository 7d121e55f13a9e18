"""Parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from medkor.model.optim import build_optimizer, build_scheduler, lr_factor, param_groups, warmup_steps_for


def test_schedule_warms_up_then_decays_to_min():
    values = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(25)]
    assert values[0] == pytest.approx(1 / 5) and values[3] == pytest.approx(4 / 5)
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[20] == pytest.approx(0.1) and values[24] == pytest.approx(0.1)


def test_warmup_ratio_overrides_steps():
    assert warmup_steps_for(1000, warmup_steps=7) == 7
    assert warmup_steps_for(1000, warmup_steps=7, warmup_ratio=0.05) == 50
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps_for(1000, warmup_ratio=1.5)


def test_groups_and_scheduler_scale_each_group():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    emb = model[0].weight
    groups = param_groups(model, learning_rate=1e-3, weight_decay=0.1, embedding_params=[emb],
                          embedding_learning_rate=1e-2)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["params"] == [model[1].weight] and by_name["decay"]["weight_decay"] == 0.1
    assert len(by_name["no_decay"]["params"]) == 3 and by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["embeddings"]["lr"] == 1e-2 and by_name["embeddings"]["weight_decay"] == 0.1
    optimizer = build_optimizer(groups)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup=0, learning_rate=1e-3, min_learning_rate=1e-4)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["decay"] == pytest.approx(1e-4) and lrs["embeddings"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="min_learning_rate"):
        build_scheduler(optimizer, total_steps=10, warmup=0, learning_rate=1e-3, min_learning_rate=1e-2)


def test_nothing_to_train_is_an_error():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(model, learning_rate=1e-3, weight_decay=0.0)


def test_a_schedule_without_an_end_is_refused():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1.0)
    with pytest.raises(ValueError, match="needs the run's length.*set trainer.max_steps or trainer.max_epochs"):
        build_scheduler(optimizer, total_steps=10**12, warmup=0, learning_rate=1.0, min_learning_rate=0.0)


def test_a_fit_without_an_end_stops_before_its_first_step(demo_model_path, demo_extended_tokenizer_path):
    """Lightning's estimate is infinite: before, the schedule took 10**12 steps and the lr stayed near zero."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from medkor.model import MedGemmaModule

    module = MedGemmaModule(str(demo_model_path), str(demo_extended_tokenizer_path), trainable="embeddings",
                            warmup_ratio=0.1)
    ids = torch.randint(3, 100, (1, 8))
    data = DataLoader([{"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}], batch_size=None)
    # max_time only bounds the old behaviour's endless fit here; it gives the schedule no length either
    trainer = Trainer(accelerator="cpu", max_epochs=-1, max_steps=-1, max_time={"seconds": 20}, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="needs the run's length"):
        trainer.fit(module, train_dataloaders=data)
    assert trainer.global_step == 0
