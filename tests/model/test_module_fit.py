"""MedGemmaModule under a Lightning Trainer: logged metrics, small checkpoints, exact resume."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from medkor.callbacks.checkpoint_io import load_checkpoint_file
from medkor.model import MedGemmaModule

TEXTS = [
    " 당뇨병성 신경병증은 말초 신경을 손상시킨다.", " 심근경색 환자에게 아스피린을 투여한다.",
    " 항생제는 세균 감염 치료에 사용된다.", " 고혈압은 심혈관 질환의 주요 위험 인자이다.",
    " 약사는 복약 지도를 통해 부작용을 설명한다.", " 간호사는 환자의 활력 징후를 기록한다.",
    " 폐렴의 흔한 증상은 발열과 기침이다.", " 혈압 측정 전에는 안정을 취해야 한다.",
]


def packed_batches(tokenizer, rows=2, per_row=2, batches=2):
    """Packed rows of `per_row` documents each, position_ids restarting per document."""
    docs = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for t in TEXTS]
    out, i = [], 0
    for _ in range(batches):
        ids, pos = [], []
        for _ in range(rows):
            row_ids, row_pos = [], []
            for _ in range(per_row):
                doc = docs[i % len(docs)]
                i += 1
                row_ids += doc
                row_pos += list(range(len(doc)))
            ids.append(row_ids)
            pos.append(row_pos)
        width = max(map(len, ids))
        input_ids = torch.tensor([r + [0] * (width - len(r)) for r in ids])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        positions = torch.tensor([p + [0] * (width - len(p)) for p in pos])
        out.append({"input_ids": input_ids, "attention_mask": mask, "position_ids": positions,
                    "labels": input_ids.masked_fill(mask == 0, -100)})
    # batch_size=None: the loader yields the prepared batches as they are.
    return DataLoader(out, batch_size=None)


def _trainer(tmp_path, name, callbacks=(), max_epochs=2):
    return Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=CSVLogger(tmp_path, name=name),
        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, num_sanity_val_steps=0, deterministic=True,
    )


def _module(assets, **kw):
    seed_everything(0)
    defaults = dict(trainable="new_embeddings", learning_rate=1e-2, weight_decay=0.1, warmup_steps=1,
                    min_learning_rate=1e-3, save_trainable_only=True)
    defaults.update(kw)
    return MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), **defaults)


def test_fit_logs_metrics_and_resumes_exactly_from_trainable_only_checkpoint(assets, tmp_path):
    module = _module(assets)
    data = packed_batches(module.tokenizer)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1, filename="e{epoch}")
    trainer = _trainer(tmp_path, "straight", [ckpt])
    trainer.fit(module, train_dataloaders=data, val_dataloaders=DataLoader(list(data)[:1], batch_size=None))
    straight = module.hf_model.get_input_embeddings().weight.detach().clone()

    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    columns = set(rows[0])
    for key in ("train/loss", "val/loss", "train/tokens_per_sec", "train/lr"):
        assert key in columns, key
    rates = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    assert rates and all(rate > 0 for rate in rates)
    assert len([r for r in rows if r.get("val/loss")]) == 2  # once per epoch

    first = load_checkpoint_file(tmp_path / "ckpt" / "eepoch=0.ckpt")
    assert set(first["state_dict"]) == {"model.model.embed_tokens.weight", "model.lm_head.weight"}
    assert first["optimizer_states"][0]["state"]  # AdamW moments of the trainable rows travel along

    resumed = _module(assets)
    trainer = _trainer(tmp_path, "resumed")
    trainer.fit(resumed, train_dataloaders=data, val_dataloaders=DataLoader(list(data)[:1], batch_size=None),
                ckpt_path=str(tmp_path / "ckpt" / "eepoch=0.ckpt"))
    assert trainer.global_step == 4
    torch.testing.assert_close(resumed.hf_model.get_input_embeddings().weight.detach(), straight, rtol=0, atol=0)


def test_trainable_only_checkpoint_refuses_another_policy(assets, tmp_path):
    module = _module(assets)
    data = packed_batches(module.tokenizer, batches=1)
    trainer = _trainer(tmp_path, "a", max_epochs=1)
    trainer.fit(module, train_dataloaders=data)
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(path)
    other = _module(assets, trainable="full")
    with pytest.raises(RuntimeError, match="do not match this module's trainable set"):
        _trainer(tmp_path, "b", max_epochs=2).fit(other, train_dataloaders=data, ckpt_path=str(path))


def test_full_checkpoint_loads_strictly(assets, tmp_path):
    module = _module(assets, trainable="full", save_trainable_only=False)
    data = packed_batches(module.tokenizer, batches=1)
    trainer = _trainer(tmp_path, "full", max_epochs=1)
    trainer.fit(module, train_dataloaders=data)
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = load_checkpoint_file(path)
    assert len(checkpoint["state_dict"]) > 10
    again = _module(assets, trainable="full", save_trainable_only=False)
    again.on_load_checkpoint(checkpoint)
    assert again.strict_loading
    again.load_state_dict(checkpoint["state_dict"], strict=True)
    for (name, a), b in zip(module.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_works_beside_the_fused_optimizer_under_bf16_mixed(assets, tmp_path, algorithm):
    # Lightning's mixed-precision plugin refuses clipping beside a fused optimizer; the GPU
    # configs clip under bf16-mixed, so the module clips itself where no loss scaler exists.
    module = _module(assets)
    data = packed_batches(module.tokenizer, batches=2)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, precision="bf16-mixed", gradient_clip_val=0.05,
        gradient_clip_algorithm=algorithm, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=data)
    assert trainer.global_step == 2
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"]

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    module.configure_gradient_clipping(optimizer, 0.05, algorithm)
    grads = [p.grad for p in params]
    if algorithm == "norm":
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert total.item() == pytest.approx(0.05, rel=1e-3)
    else:
        assert max(g.abs().max().item() for g in grads) == pytest.approx(0.05)
