"""MedGemmaModule under Lightning's FSDPStrategy on CPU: two processes over gloo.

Run by tests/model/test_module_fsdp.py as `python fsdp_worker.py MODEL TOKENIZER OUT`;
Lightning starts the second process itself (as `medkor fit` does on one node). Rank 0
writes OUT/report.json.

Lightning refuses FSDPStrategy without a GPU by its exact type, and torch's FSDP needs
an explicit CPU device when no accelerator exists; the two shims below change only
that. Everything else is the GPU code path: `configure_model` in the strategy's init
contexts, auto-wrap and activation checkpointing of `Gemma3DecoderLayer`, the
optimizer built after wrapping (`use_orig_params`), norm clipping, sharded
checkpoints written every N steps and `last`, and resuming from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed.fsdp as torch_fsdp
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader
from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer

from medkor.callbacks import KorMedMCQAEval

DEMO_KORMEDMCQA = Path(__file__).resolve().parents[2] / "medkor" / "assets" / "demo" / "kormedmcqa"

import medkor.model.module as module_code
from medkor.model import MedGemmaModule
from medkor.model.optim import param_groups

TEXTS = [" 당뇨병 환자는 혈당을 자주 측정해야 한다.", " 고혈압은 심혈관 질환의 주요 위험 인자이다."]
CLIP = 0.05


class CPUFSDPStrategy(FSDPStrategy):
    """FSDPStrategy by another type name: Lightning's GPU check compares the exact type."""


_fsdp_init = torch_fsdp.FullyShardedDataParallel.__init__


def _fsdp_init_on_cpu(self, module, *args, device_id=None, **kwargs):
    """Lightning passes the CPU device's index (None); torch wants the CPU device itself then."""
    _fsdp_init(self, module, *args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)


torch_fsdp.FullyShardedDataParallel.__init__ = _fsdp_init_on_cpu


BUILDS = []
_build = module_code.build_model


def _counted_build(*args, **kwargs):
    BUILDS.append(1)
    return _build(*args, **kwargs)


module_code.build_model = _counted_build


class Recorder(Callback):
    """Per-step losses, what the wrapped model looks like, and the gradient norm before clipping."""

    def __init__(self, stop_at=None) -> None:
        self.losses: dict[int, float] = {}
        self.seen: dict = {}
        self.stop_at = stop_at

    def on_train_start(self, trainer, pl_module):
        layer = next(m for m in pl_module.model.modules() if isinstance(m, Gemma3DecoderLayer))
        weight = layer.mlp.down_proj.weight
        groups = trainer.optimizers[0].param_groups
        ids = torch.tensor([[2] + pl_module.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]])
        try:
            pl_module.model(input_ids=ids, logits_to_keep=1)
            direct = "ok"
        except RuntimeError as err:  # parameters are flat shards outside the FSDP forward
            direct = str(err)
        with pl_module.unsharded() as model:
            logits = model(input_ids=ids, logits_to_keep=1).logits
        self.seen.update(
            wrapped=type(trainer.model).__name__,
            fsdp_units=sum(isinstance(m, torch_fsdp.FullyShardedDataParallel) for m in trainer.model.modules()),
            checkpointed_layers=sum("CheckpointWrapper" in type(m).__name__ for m in trainer.model.modules()),
            layer_weight_ndim=weight.ndim,
            groups=[[g["name"], len(g["params"]), g["weight_decay"]] for g in groups],
            # what grouping by shape would see now: every parameter a 1-D shard
            groups_read_after_wrapping=[g["name"] for g in param_groups(
                pl_module.model, learning_rate=1.0, weight_decay=0.1,
                embedding_params=[pl_module.hf_model.get_input_embeddings().weight])],
            direct_call=direct,
            unsharded_logits=list(logits.shape),
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen["grad_norm_before_clip"] = max(self.seen.get("grad_norm_before_clip", 0.0),
                                                 float(trainer.model.clip_grad_norm_(float("inf"))))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True  # as a preemption would, right after a step checkpoint


class ClipRecorder(MedGemmaModule):
    """Records the global gradient norm right after the module's clipping."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        norm = float(self.trainer.model.clip_grad_norm_(float("inf")))
        self.clipped_norms = getattr(self, "clipped_norms", []) + [norm]


def batches(tokenizer) -> DataLoader:
    out = []
    for text in TEXTS:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
                            + [tokenizer.eos_token_id]])
        out.append({"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    return DataLoader(out, batch_size=None)  # the same batches on both ranks


def run(model: str, tokenizer: str, out: Path, *, name: str, stop_at=None, ckpt_path=None):
    seed_everything(0)
    module = ClipRecorder(model, tokenizer, trainable="full", learning_rate=1e-2, weight_decay=0.1,
                          embedding_learning_rate=5e-3)
    recorder = Recorder(stop_at)
    steps = ModelCheckpoint(dirpath=out / name, every_n_train_steps=2, save_top_k=0, save_last=True)
    strategy = CPUFSDPStrategy(
        sharding_strategy="FULL_SHARD",
        auto_wrap_policy={Gemma3DecoderLayer},
        activation_checkpointing_policy={Gemma3DecoderLayer},
        state_dict_type="sharded",
    )
    # the KorMedMCQA baseline under FSDP (parameters are shards outside a step)
    kormedmcqa = KorMedMCQAEval(source=str(DEMO_KORMEDMCQA), max_samples=2, batch_size=4,
                                every_n_epochs=0, write_predictions=False)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=6, gradient_clip_val=CLIP,
        default_root_dir=out / name,
        logger=False, callbacks=[recorder, steps] + ([kormedmcqa] if name == "straight" else []), enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=1, deterministic=True,
    )
    data = batches(module.tokenizer)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data, ckpt_path=ckpt_path)
    # No trainer.validate(module) here: Lightning 2.6 does not re-wrap a module whose layers
    # FSDP already wrapped, so validate after fit in one process fails; the CLI runs each
    # stage in its own process.
    return {
        "losses": recorder.losses,
        "seen": recorder.seen,
        "global_step": trainer.global_step,
        "builds": len(BUILDS),
        "clipped_norms": getattr(module, "clipped_norms", []),
        "gradient_clip_val": CLIP,
        "last": str(steps.last_model_path),
        "last_is_sharded_folder": Path(steps.last_model_path).is_dir(),
        "rank": trainer.global_rank,
        "kormedmcqa_baseline": kormedmcqa.baseline,
    }


def main() -> None:
    model, tokenizer, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    straight = run(model, tokenizer, out, name="straight")
    BUILDS.clear()
    first = run(model, tokenizer, out, name="first", stop_at=4)
    BUILDS.clear()
    resumed = run(model, tokenizer, out, name="resumed", ckpt_path=first["last"])
    if straight["rank"] == 0:
        report = {"straight": straight, "first": first, "resumed": resumed}
        (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
