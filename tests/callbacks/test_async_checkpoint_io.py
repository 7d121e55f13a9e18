"""Checkpoints written beside training: the step returns before the write, the file holds the state at the save,
a failed write stops the run in one line, and every write is on disk when the run ends."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from medkor.callbacks.async_checkpoint_io import AsyncAtomicCheckpointIO, CheckpointSaveError, CheckpointWriteWatch
from medkor.callbacks.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from medkor.run.atomic import leftover_temp_files
from medkor.run.snapshot import HostSnapshot, Snapshot


@pytest.fixture
def gated_writes(monkeypatch):
    """Background writes wait for `gate` to open; `started` is set when one begins."""
    gate, started = threading.Event(), threading.Event()
    real = AtomicCheckpointIO.save_checkpoint

    def gated(self, checkpoint, path, storage_options=None):
        started.set()
        assert gate.wait(30)
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", gated)
    return gate, started


def test_save_returns_before_the_write_and_the_file_holds_the_state_at_the_save(tmp_path, gated_writes):
    gate, started = gated_writes
    io = AsyncAtomicCheckpointIO()
    weight = torch.zeros(1000)
    moments = {"state": {0: {"exp_avg": torch.zeros(10), "step": torch.tensor(3.0)}}}
    io.save_checkpoint({"state_dict": {"w": weight}, "optimizer_states": [moments]}, tmp_path / "a.ckpt")
    assert started.wait(10) and io.pending() == [str(tmp_path / "a.ckpt")]
    assert not (tmp_path / "a.ckpt").exists()  # the write has not happened, the call has returned
    weight.add_(1.0)  # the next optimizer step changes everything in place
    moments["state"][0]["exp_avg"].add_(5.0)
    gate.set()
    io.teardown()
    assert io.pending() == [] and leftover_temp_files(tmp_path) == []
    loaded = load_checkpoint_file(tmp_path / "a.ckpt")
    assert torch.equal(loaded["state_dict"]["w"], torch.zeros(1000))
    assert torch.equal(loaded["optimizer_states"][0]["state"][0]["exp_avg"], torch.zeros(10))


def test_load_and_remove_wait_for_the_write(tmp_path, gated_writes):
    gate, started = gated_writes
    io = AsyncAtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(4)}, tmp_path / "a.ckpt")
    assert started.wait(10)
    threading.Timer(0.3, gate.set).start()
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.ones(4))  # waited for the write
    io.save_checkpoint({"w": torch.ones(4)}, tmp_path / "b.ckpt")
    io.remove_checkpoint(tmp_path / "b.ckpt")
    io.teardown()
    assert not (tmp_path / "b.ckpt").exists()  # removed after its write, not before


def test_a_failed_write_is_raised_once_naming_the_file(tmp_path, monkeypatch):
    def full_disk(self, checkpoint, path, storage_options=None):
        raise OSError(errno.ENOSPC, f"cannot write checkpoint {path}: No space left on device (ENOSPC)")

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk)
    io = AsyncAtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(4)}, tmp_path / "a.ckpt")
    io.wait()
    with pytest.raises(CheckpointSaveError) as info:
        io.save_checkpoint({"w": torch.ones(4)}, tmp_path / "b.ckpt")  # the next save reports it
    text = str(info.value)
    assert str(tmp_path / "a.ckpt") in text and "training stopped" in text and "\n" not in text
    assert info.value.errno == errno.ENOSPC
    io.raise_if_failed()  # raised once
    io.teardown()


def test_tied_tensors_stay_shared_and_buffers_are_reused():
    snap = HostSnapshot()
    tied = torch.randn(8, 4)
    taken = snap.take({"embed": tied, "head": tied, "nested": [(tied[0], torch.ones(2))]}, defer_cpu_copies=True)
    copied = taken.checkpoint
    assert taken.ready is None and copied["embed"] is copied["head"] and copied["embed"] is not tied
    assert len(taken.buffers) == 3 and len(taken.copies) == 3 and not taken.copied.is_set()
    taken.copy_now()
    assert taken.copied.is_set() and torch.equal(copied["nested"][0][0], tied[0])
    snap.release(taken.buffers)
    again = snap.take({"embed": tied, "head": tied, "nested": [(tied[0], torch.ones(2))]})
    assert [b.data_ptr() for b in again.buffers] == [b.data_ptr() for b in taken.buffers]
    assert torch.equal(again.checkpoint["embed"], tied)  # copied at once without defer_cpu_copies


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 16)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


class _WeightsAtSaves(Callback):
    """The weight after each optimizer step, by global step."""

    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = pl_module.layer.weight.detach().clone()


def _fit(tmp_path, steps, extra=()):
    torch.manual_seed(0)
    record = _WeightsAtSaves()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="s{step}",
                           auto_insert_metric_name=False)
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, plugins=[AsyncAtomicCheckpointIO()],
                      callbacks=[CheckpointWriteWatch(), ckpt, record, *extra])
    data = DataLoader(torch.randn(steps, 4, 16), batch_size=None)
    return trainer, record, lambda: trainer.fit(_Linear(), train_dataloaders=data)


def test_a_fit_ends_with_every_checkpoint_on_disk_holding_its_step(tmp_path, monkeypatch):
    real_copy = Snapshot.copy_now

    def slow_copy(self):  # the copies start well after the next step's optimizer would have run
        time.sleep(0.3)
        real_copy(self)

    monkeypatch.setattr(Snapshot, "copy_now", slow_copy)
    trainer, record, fit = _fit(tmp_path, 4)
    fit()
    assert sorted(os.listdir(tmp_path / "ckpt")) == [f"s{step}.ckpt" for step in (1, 2, 3, 4)]
    for step in (1, 2, 3, 4):
        saved = load_checkpoint_file(tmp_path / "ckpt" / f"s{step}.ckpt")
        assert saved["global_step"] == step
        assert torch.equal(saved["state_dict"]["layer.weight"], record.weights[step])


def test_a_failed_background_write_stops_the_run_at_the_next_batch(tmp_path, monkeypatch):
    real = AtomicCheckpointIO.save_checkpoint

    def fail_second(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] == 2:
            raise OSError(errno.EIO, f"cannot write checkpoint {path}: Input/output error (EIO)")
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", fail_second)
    trainer, _, fit = _fit(tmp_path, 30)
    with pytest.raises(CheckpointSaveError, match="s2.ckpt.*Input/output error"):
        fit()
    assert trainer.global_step <= 4  # stopped within a step or two of the failure, not at the end
    assert not (tmp_path / "ckpt" / "s2.ckpt").exists() and leftover_temp_files(tmp_path / "ckpt") == []


def test_the_command_prints_a_failed_background_save_in_one_line(repo_root, monkeypatch, capsys):
    import medkor.lightning_cli
    from medkor.cli import main

    def failing_run(args, from_argv=False):
        raise CheckpointSaveError("cannot write checkpoint /x/last.ckpt: No space left on device (ENOSPC). Free "
                                  "space (written in the background; training stopped)")

    monkeypatch.chdir(repo_root)
    monkeypatch.delenv("MEDKOR_DEBUG", raising=False)
    monkeypatch.setattr(medkor.lightning_cli, "run_cli", failing_run)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "configs/demo.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and err == [
        "medkor fit: error: cannot write checkpoint /x/last.ckpt: No space left on device (ENOSPC). Free space "
        "(written in the background; training stopped)"]


def test_a_phase_switch_waits_for_the_copies_of_a_pending_save(tmp_path, monkeypatch):
    """A staged trainable may clear AdamW moments at the batch that enters a phase: the copy must come first."""
    from types import SimpleNamespace

    release = threading.Event()
    real_copy = Snapshot.copy_now

    def held_copy(self):
        assert release.wait(30)
        real_copy(self)

    monkeypatch.setattr(Snapshot, "copy_now", held_copy)
    io = AsyncAtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(4)}, tmp_path / "a.ckpt")
    trainer = SimpleNamespace(strategy=SimpleNamespace(checkpoint_io=io), global_step=5)
    module = SimpleNamespace(hparams={"trainable": [{"policy": "new_embeddings", "until_step": 5},
                                                    {"policy": "embeddings+lora", "until_step": None}]})
    watch = CheckpointWriteWatch()
    trainer.global_step = 4  # no switch: returns at once, the copy still held
    watch.on_train_batch_start(trainer, module, None, 0)
    assert io.pending()
    threading.Timer(0.3, release.set).start()
    trainer.global_step = 5  # the switch: waits until the copy is taken
    watch.on_train_batch_start(trainer, module, None, 0)
    assert release.is_set()
    io.teardown()
    assert torch.equal(load_checkpoint_file(tmp_path / "a.ckpt")["w"], torch.ones(4))
