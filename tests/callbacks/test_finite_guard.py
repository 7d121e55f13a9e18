"""NonFiniteGuard under a real Trainer: stop before the step, skip exactly the bad step, accumulation windows."""

from __future__ import annotations

import csv
import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from medkor.callbacks.checkpoint_io import load_checkpoint_file
from medkor.callbacks.finite_guard import NonFiniteGuard, NonFiniteLossError, all_finite, finite_flag
from tests.eval.tiny_lm import build_model

POISON_PARAM = "model.model.layers.1.mlp.down_proj.weight"


class TinyModule(pl.LightningModule):
    """A tiny causal LM whose loss (``nan_batches``) or one gradient (``inf_grad_batches``) can be poisoned."""

    def __init__(self, tokenizer, lr=1e-3, nan_batches=(), inf_grad_batches=(), fused=False):
        super().__init__()
        self.model = build_model(tokenizer).train()
        self.lr = lr
        self.fused = fused
        self.nan_batches = set(nan_batches)
        self.inf_grad_batches = set(inf_grad_batches)
        self._batch_idx = None

    def training_step(self, batch, batch_idx):
        self._batch_idx = batch_idx
        loss = self.model(input_ids=batch, labels=batch).loss
        if batch_idx in self.nan_batches:
            loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def on_after_backward(self):
        if self._batch_idx in self.inf_grad_batches:
            grad = dict(self.named_parameters())[POISON_PARAM].grad
            grad.view(-1)[3] = float("inf")

    def configure_optimizers(self):
        # fused: the kernel takes the guard's device flag (found_inf); plain: the guard reads every step
        return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=self.fused or None)


class Snapshots(Callback):
    """Weights and Adam moments before and after every training batch."""

    def __init__(self):
        self.before, self.after, self.moments_before, self.moments_after = {}, {}, {}, {}

    @staticmethod
    def _weights(pl_module):
        return torch.nn.utils.parameters_to_vector(pl_module.parameters()).detach().clone()

    @staticmethod
    def _moments(trainer):
        state = trainer.optimizers[0].state
        return [s["exp_avg"].clone() for s in state.values() if "exp_avg" in s]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[batch_idx] = self._weights(pl_module)
        self.moments_before[batch_idx] = self._moments(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[batch_idx] = self._weights(pl_module)
        self.moments_after[batch_idx] = self._moments(trainer)


def batches(tokenizer, n=4):
    text = "고혈압 환자에게 가장 먼저 투여하는 약물은 무엇인가? 당뇨병의 합병증으로 옳은 것은?"
    ids = torch.tensor(tokenizer(text)["input_ids"][:16])
    return torch.utils.data.DataLoader([ids] * (2 * n), batch_size=2)


def make_trainer(root, callbacks, **kw):
    options = dict(
        accelerator="cpu", max_epochs=1, logger=CSVLogger(root, name="run"), callbacks=callbacks,
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), num_sanity_val_steps=0,
    )
    options.update(kw)
    return pl.Trainer(**options)


def all_weights_finite(module):
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def test_all_finite_flags_nan_and_inf_but_not_large_values():
    big = torch.full((1000,), 1e30)  # its 2-norm overflows float32, not the float64 norm the flag takes
    assert bool(finite_flag([big])) and all_finite([big])
    assert all_finite([torch.full((1000,), 3e38)])  # near float32's largest value
    assert all_finite([big, torch.tensor(1.0), torch.zeros(0), torch.ones(3, dtype=torch.bfloat16)])
    assert all_finite([torch.full((10_000,), 1000.0, dtype=torch.float16)])
    assert not all_finite([big, torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor(float("-inf")), torch.ones(2)])
    assert bool(finite_flag([torch.ones(3), torch.tensor(2.0, dtype=torch.bfloat16)]))
    assert not bool(finite_flag([torch.ones(3), torch.tensor([float("nan")])]))
    assert finite_flag([]) is None and finite_flag([torch.zeros(0)]) is None and all_finite([])


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        NonFiniteGuard(mode="ignore")
    with pytest.raises(ValueError, match="max_skipped"):
        NonFiniteGuard(max_skipped=-1)


def test_absurd_learning_rate_stops_before_the_step_and_no_nan_checkpoint(tmp_path, tokenizer):
    module = TinyModule(tokenizer, lr=1e6)
    periodic = ModelCheckpoint(dirpath=tmp_path / "every", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    on_error = ModelCheckpoint(dirpath=tmp_path / "error", every_n_epochs=0, save_on_exception=True, filename="{step}")
    trainer = make_trainer(tmp_path, [NonFiniteGuard(), periodic, on_error], max_epochs=3)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(module, batches(tokenizer))
    step = trainer.global_step
    message = str(caught.value)
    assert step > 0 and "\n" not in message
    epoch, batch = divmod(step, 4)
    assert re.search(rf"at global step {step} \(epoch {epoch}, batch {batch}\): ", message), message
    assert "--model.learning_rate" in message and "--trainer.gradient_clip_val" in message and "mode: skip" in message
    assert all_weights_finite(module)  # the step that would have applied the non-finite update never ran

    # checkpoints of the finished steps only, none after the failing step; the on-exception one is finite
    assert sorted(p.name for p in (tmp_path / "every").iterdir()) == sorted(f"step={s}.ckpt" for s in range(1, step + 1))
    saved = [*(tmp_path / "every").iterdir(), *(tmp_path / "error").iterdir()]
    assert [p.name for p in (tmp_path / "error").iterdir()] == [f"step={step}.ckpt"]
    for path in saved:
        state = load_checkpoint_file(path)["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for v in state.values()), path.name


def test_nan_loss_stops_naming_step_epoch_batch_and_leaves_the_weights_unchanged(tmp_path, tokenizer):
    module = TinyModule(tokenizer, nan_batches={2})
    snapshots = Snapshots()
    trainer = make_trainer(tmp_path, [NonFiniteGuard(), snapshots])
    with pytest.raises(NonFiniteLossError, match=r"global step 2 \(epoch 0, batch 2\): loss nan \(batch 2\)"):
        trainer.fit(module, batches(tokenizer))
    assert trainer.global_step == 2
    assert torch.equal(torch.nn.utils.parameters_to_vector(module.parameters()).detach(), snapshots.before[2])


def test_poisoned_gradient_names_the_parameter(tmp_path, tokenizer):
    module = TinyModule(tokenizer, inf_grad_batches={1})
    with pytest.raises(NonFiniteLossError, match=rf"global step 1 .*: inf in the gradient of {re.escape(POISON_PARAM)}\."):
        make_trainer(tmp_path, [NonFiniteGuard()]).fit(module, batches(tokenizer))
    assert all_weights_finite(module)


def test_accumulation_names_every_batch_of_the_window(tmp_path, tokenizer):
    module = TinyModule(tokenizer, nan_batches={3})
    trainer = make_trainer(tmp_path, [NonFiniteGuard()], accumulate_grad_batches=2)
    with pytest.raises(NonFiniteLossError, match=r"global step 1 \(epoch 0, batches 2, 3\): loss nan \(batch 3\)"):
        trainer.fit(module, batches(tokenizer))


def test_skip_mode_skips_exactly_the_bad_step_and_keeps_the_count_in_checkpoints(tmp_path, tokenizer, caplog):
    module = TinyModule(tokenizer, nan_batches={2})
    snapshots = Snapshots()
    guard = NonFiniteGuard(mode="skip", max_skipped=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, [guard, snapshots, checkpoint])
    with caplog.at_level("INFO"):
        trainer.fit(module, batches(tokenizer))
    assert trainer.global_step == 4 and guard.skipped == 1
    for k in range(4):
        unchanged = torch.equal(snapshots.before[k], snapshots.after[k])
        assert unchanged == (k == 2), k
    # Adam moments were not touched by the skipped step either
    assert all(torch.equal(a, b) for a, b in zip(snapshots.moments_before[2], snapshots.moments_after[2]))
    assert all_weights_finite(module)
    skips = [r.getMessage() for r in caplog.records if "NonFiniteGuard skipped" in r.getMessage()]
    assert len(skips) == 1 and "global step 2 (epoch 0, batch 2): loss nan" in skips[0]

    with open(trainer.logger.log_dir + "/metrics.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/skipped_steps")]
    assert [(int(r["step"]), float(r["train/skipped_steps"])) for r in rows] == [(0, 0), (1, 0), (2, 1), (3, 1)]

    saved = load_checkpoint_file(tmp_path / "ckpt" / "last.ckpt")
    (state,) = [v for k, v in saved["callbacks"].items() if "NonFiniteGuard" in k]
    assert state == {"skipped": 1}
    resumed = NonFiniteGuard(mode="skip", max_skipped=1)
    # a resumed run carries the count on: one more skip is more than max_skipped=1
    with pytest.raises(NonFiniteLossError, match=r"2 optimizer steps were skipped .* more than max_skipped=1"):
        make_trainer(tmp_path, [resumed], max_epochs=2).fit(
            TinyModule(tokenizer, nan_batches={1}), batches(tokenizer), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


def test_skip_mode_stops_once_more_than_max_skipped(tmp_path, tokenizer):
    module = TinyModule(tokenizer, nan_batches={0, 2, 3})
    guard = NonFiniteGuard(mode="skip", max_skipped=2)
    trainer = make_trainer(tmp_path, [guard])
    with pytest.raises(NonFiniteLossError, match=r"3 optimizer steps were skipped .*max_skipped=2; the last at global step 3"):
        trainer.fit(module, batches(tokenizer))
    assert guard.skipped == 3 and all_weights_finite(module)


# ---- decided on the device: a fused optimizer skips on the guard's flag, read at logging steps only
def test_fused_stop_is_read_at_the_logging_step_and_no_update_after_the_bad_one(tmp_path, tokenizer):
    module = TinyModule(tokenizer, nan_batches={1}, fused=True)
    snapshots = Snapshots()
    trainer = make_trainer(tmp_path, [NonFiniteGuard(), snapshots], log_every_n_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"global step 1 \(epoch 0, batch 1\): loss nan \(batch 1\).*\. "
                                                 r"The optimizer step was not taken \(nor the 1 after it\)"):
        trainer.fit(module, batches(tokenizer))
    assert trainer.global_step == 3  # read at the end of the third step (a logging step), its update blocked
    assert not torch.equal(snapshots.before[0], snapshots.before[1])  # step 0 did train
    weights = torch.nn.utils.parameters_to_vector(module.parameters()).detach()
    assert torch.equal(weights, snapshots.before[1])  # nothing from step 1 on reached the weights
    assert not hasattr(trainer.optimizers[0], "found_inf")


def test_fused_skip_leaves_exactly_the_bad_step_out_and_counts_it_at_the_read(tmp_path, tokenizer, caplog):
    module = TinyModule(tokenizer, inf_grad_batches={1}, fused=True)
    snapshots = Snapshots()
    guard = NonFiniteGuard(mode="skip")
    trainer = make_trainer(tmp_path, [guard, snapshots], log_every_n_steps=3)
    with caplog.at_level("INFO"):
        trainer.fit(module, batches(tokenizer))
    assert trainer.global_step == 4 and guard.skipped == 1
    for k in range(4):
        assert torch.equal(snapshots.before[k], snapshots.after[k]) == (k == 1), k
    assert all(torch.equal(a, b) for a, b in zip(snapshots.moments_before[1], snapshots.moments_after[1]))
    state = trainer.optimizers[0].state
    assert all(int(s["step"]) == 3 for s in state.values())  # the skipped step is not counted by Adam either
    skips = [r.getMessage() for r in caplog.records if "NonFiniteGuard skipped" in r.getMessage()]
    assert len(skips) == 1 and f"global step 1 (epoch 0, batch 1): inf in the gradient of {POISON_PARAM}" in skips[0]
    with open(trainer.logger.log_dir + "/metrics.csv", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/skipped_steps")]
    assert [(int(r["step"]), float(r["train/skipped_steps"])) for r in rows] == [(2, 1)]  # logging steps only


def test_a_checkpoint_between_logging_steps_reads_the_flags_first(tmp_path, tokenizer):
    module = TinyModule(tokenizer, nan_batches={1}, fused=True)
    periodic = ModelCheckpoint(dirpath=tmp_path / "every", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    with pytest.raises(NonFiniteLossError, match=r"global step 1 "):
        make_trainer(tmp_path, [NonFiniteGuard(), periodic], log_every_n_steps=50).fit(module, batches(tokenizer))
    # the checkpoint after the bad step was refused before it was written
    assert sorted(p.name for p in (tmp_path / "every").iterdir()) == ["step=1.ckpt"]
    assert all_weights_finite(module)


def test_fused_checks_are_read_in_a_run_that_logs_nothing(tmp_path, tokenizer):
    module = TinyModule(tokenizer, nan_batches={1}, fused=True)
    snapshots = Snapshots()
    trainer = make_trainer(tmp_path, [NonFiniteGuard(), snapshots], log_every_n_steps=0, logger=False)
    with pytest.raises(NonFiniteLossError, match=r"global step 1 .*not taken \(nor the 2 after it\)"):
        trainer.fit(module, batches(tokenizer))  # read at the end of the epoch (4 steps, fewer than 50)
    assert torch.equal(torch.nn.utils.parameters_to_vector(module.parameters()).detach(), snapshots.before[1])
