"""Staged trainable schedules: phases checked, switched in one optimizer, exact on resume."""

from __future__ import annotations

import csv
import logging
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from medkor.callbacks.checkpoint_io import load_checkpoint_file
from medkor.model import MedGemmaModule
from medkor.model.optim import build_optimizer, param_groups
from medkor.model.schedule import TrainablePhase, parse_phases, phase_at
from test_module_fit import packed_batches

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("value, message", [
    ("everything", r"model.trainable 'everything' is not one of"),
    ([], r"model.trainable must be a policy .* or a non-empty list"),
    ([{"policy": "lora", "until_step": 5}], r"model.trainable\[0\].until_step must be null: the last phase"),
    ([{"policy": "lora"}, {"policy": "full"}], r"model.trainable\[0\].until_step must be an integer >= 1"),
    ([{"policy": "lora", "until_step": 0}, {"policy": "full"}], r"model.trainable\[0\].until_step must be an int"),
    ([{"policy": "lora", "until_step": 4}, {"policy": "full", "until_step": 4}, {"policy": "lora"}],
     r"model.trainable\[1\].until_step 4 must be greater than the previous phase's 4"),
    ([{"policy": "lora", "until_step": 2}, {"policy": "bogus"}], r"model.trainable\[1\].policy 'bogus' is not one"),
    ([{"policy": "lora", "steps": 2}], r"model.trainable\[0\] must be a mapping with policy and until_step"),
])
def test_bad_phases_are_refused_naming_the_phase(value, message):
    with pytest.raises(ValueError, match=message):
        parse_phases(value)


def test_phases_and_the_step_they_train():
    phases = parse_phases([TrainablePhase("new_embeddings", 3), {"policy": "full", "until_step": 5},
                           {"policy": "lora"}])
    assert [phase_at(phases, s) for s in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert parse_phases("lora") == [TrainablePhase("lora")]


def _module(assets, trainable, **kw):
    seed_everything(0)
    options = dict(trainable=trainable, lora=LORA, learning_rate=1e-2, weight_decay=0.1, warmup_steps=0)
    options.update(kw)
    return MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), **options)


def _batch(module):
    enc = module.tokenizer([" 당뇨병성 신경병증 심근경색 <dx>", " 항생제는 부작용을 고혈압은 활력"], padding=True,
                           return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": enc["input_ids"]}


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_phases_switch_in_one_optimizer(assets):
    module = _module(assets, [{"policy": "new_embeddings", "until_step": 2}, {"policy": "embeddings+lora"}])
    schedule, model = module._parts().schedule, module.model
    n_base = module.embedding_plan.n_base
    emb = module.hf_model.get_input_embeddings().weight
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora) and emb.requires_grad  # all on for the optimizer
    optimizer = build_optimizer(param_groups(model, learning_rate=1e-2, weight_decay=0.1,
                                             embedding_params=module._policy.embedding_params))
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    embedding_group = next(g for g in optimizer.param_groups if g["name"] == "embeddings")
    emb_name = next(n for n, p in model.named_parameters() if p is emb)
    start = _snapshot(module)
    trace = []
    for step in range(4):
        schedule.apply(phase_at(schedule.phases, step), optimizer, weight_decay=0.1)
        training = {n for n, p in model.named_parameters() if p.requires_grad}
        trace.append((embedding_group["weight_decay"], training == {emb_name} | {n for n in start if "lora_" in n}))
        assert emb_name in training
        loss, _ = module.loss(_batch(module))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1:  # end of phase 1: only new rows moved; adapters wait without AdamW state
            assert torch.equal(emb[:n_base], start[emb_name][:n_base])
            assert not torch.equal(emb[n_base:], start[emb_name][n_base:])
            assert all(p not in optimizer.state for p in lora)
            assert all(torch.equal(p, start[n]) for n, p in model.named_parameters() if "lora_" in n)
            assert not any(p.requires_grad for p in lora)
            assert float(optimizer.state[emb]["step"]) == 2
    # Phase 2: the embedding's moments carried on (4 steps, not restarted), adapters started at their first step.
    assert float(optimizer.state[emb]["step"]) == 4
    assert {float(optimizer.state[p]["step"]) for p in lora} == {2.0}
    assert trace == [(0.0, False), (0.0, False), (0.1, True), (0.1, True)]
    assert not torch.equal(emb[:n_base], start[emb_name][:n_base])
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(not torch.equal(p, torch.zeros_like(p)) for p in lora_b)
    frozen = [n for n in start if "lora_" not in n and "embed_tokens" not in n]
    assert frozen and all(torch.equal(dict(model.named_parameters())[n], start[n]) for n in frozen)


def test_new_embeddings_after_embeddings_keeps_old_rows_exactly(assets):
    """Entering new_embeddings clears the old rows' moments: momentum from the first phase cannot move them."""
    module = _module(assets, [{"policy": "embeddings", "until_step": 2}, {"policy": "new_embeddings"}])
    schedule = module._parts().schedule
    emb = module.hf_model.get_input_embeddings().weight
    n_base = module.embedding_plan.n_base
    optimizer = build_optimizer(param_groups(module.model, learning_rate=1e-2, weight_decay=0.1,
                                             embedding_params=module._policy.embedding_params))
    for step in range(4):
        schedule.apply(phase_at(schedule.phases, step), optimizer, weight_decay=0.1)
        if step == 2:
            old_rows = emb[:n_base].detach().clone()
        loss, _ = module.loss(_batch(module))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.equal(emb[:n_base], old_rows)
    assert torch.count_nonzero(optimizer.state[emb]["exp_avg"][:n_base]) == 0


def _trainer(tmp_path, name, callbacks=()):
    return Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=CSVLogger(tmp_path, name=name),
                   callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                   log_every_n_steps=1, num_sanity_val_steps=0, deterministic=True)


PHASES = [{"policy": "new_embeddings", "until_step": 1}, {"policy": "embeddings+lora", "until_step": 3},
          {"policy": "lora"}]


def test_resumed_run_in_a_later_phase_equals_the_uninterrupted_one(assets, tmp_path, caplog):
    module = _module(assets, PHASES, save_trainable_only=True)
    data = packed_batches(module.tokenizer)  # 2 batches per epoch: steps 0-1, 2-3
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1, filename="e{epoch}")
    trainer = _trainer(tmp_path, "straight", [ckpt])
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer.fit(module, train_dataloaders=data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainable phase")]
    assert [line.split(":")[0] for line in lines] == [
        "trainable phase 1/3 (new_embeddings) from step 0", "trainable phase 2/3 (embeddings+lora) from step 1",
        "trainable phase 3/3 (lora) from step 3"]
    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    assert [(int(r["step"]), r["train/trainable_phase"]) for r in rows if r.get("train/trainable_phase")] == [
        (0, "1.0"), (1, "2.0"), (2, "2.0"), (3, "3.0")]

    # The trainable-only checkpoint holds every parameter any phase trains (here embeddings and adapters).
    first = load_checkpoint_file(tmp_path / "ckpt" / "eepoch=0.ckpt")
    saved = set(first["state_dict"])
    assert any("lora_" in k for k in saved) and any("embed_tokens" in k for k in saved)
    assert all("lora_" in k or "embed_tokens" in k or "lm_head" in k for k in saved)

    resumed = _module(assets, PHASES, save_trainable_only=True)
    again = _trainer(tmp_path, "resumed")
    again.fit(resumed, train_dataloaders=data, ckpt_path=str(tmp_path / "ckpt" / "eepoch=0.ckpt"))
    assert again.global_step == 4
    want, got = dict(module.model.named_parameters()), dict(resumed.model.named_parameters())
    assert {n for n, p in got.items() if p.requires_grad} == {n for n, p in want.items() if p.requires_grad}
    assert all(torch.equal(got[n], want[n]) for n in want)
    state_want, state_got = trainer.optimizers[0].state_dict(), again.optimizers[0].state_dict()
    assert state_got["param_groups"] == state_want["param_groups"]
    assert state_got["state"].keys() == state_want["state"].keys()
    for key, values in state_want["state"].items():
        assert all(torch.equal(values[k], state_got["state"][key][k]) for k in values), key


def _attach(module, strategy):
    module._trainer = SimpleNamespace(strategy=strategy)
    return module


def test_strategies_refuse_what_they_cannot_switch(assets):
    with pytest.raises(ValueError, match=r"a list of phases cannot train under FSDP.*DDP or one GPU"):
        _attach(_module(assets, PHASES), FSDPStrategy()).setup("fit")
    with pytest.raises(ValueError, match=r"phase list under DDP needs .*find_unused_parameters: true"):
        _attach(_module(assets, PHASES), DDPStrategy()).setup("fit")
    _attach(_module(assets, PHASES), DDPStrategy(find_unused_parameters=True)).setup("fit")
    _attach(_module(assets, PHASES), FSDPStrategy()).setup("validate")  # nothing switches


def test_phase_list_parses_from_yaml_and_the_command_line(tmp_path):
    from medkor.lightning_cli import parse_run_config

    flag = "[{policy: new_embeddings, until_step: 4}, {policy: full}]"
    from_flag = parse_run_config(["--config", "configs/demo.yaml", "--model.trainable", flag])
    overlay = tmp_path / "phases.yaml"
    overlay.write_text("model:\n  trainable:\n    - policy: new_embeddings\n      until_step: 4\n"
                       "    - policy: full\n", encoding="utf-8")
    from_file = parse_run_config(["--config", "configs/demo.yaml", "--config", str(overlay)])
    want = [{"policy": "new_embeddings", "until_step": 4}, {"policy": "full", "until_step": None}]
    assert from_flag.as_dict()["model"]["trainable"] == want == from_file.as_dict()["model"]["trainable"]
    assert parse_run_config(["--config", "configs/demo.yaml", "--model.trainable", "lora"]).model.trainable == "lora"
    module = MedGemmaModule(**{**from_file.as_dict()["model"]})  # checks only, loads nothing
    assert module.hparams.trainable == want
