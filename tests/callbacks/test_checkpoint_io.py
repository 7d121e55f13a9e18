"""AtomicCheckpointIO: torn-proof saves (injected and real full disks) and weights_only loads of real checkpoints."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from medkor.callbacks import KorMedMCQAEval
from medkor.callbacks.checkpoint_io import AtomicCheckpointIO, CheckpointLoadError, load_checkpoint_file
from medkor.commands import export as export_command
from medkor.model import LoraOptions, MedGemmaModule
from medkor.run.atomic import leftover_temp_files

TEXTS = [" 당뇨병성 신경병증은 말초 신경을 손상시킨다.", " 심근경색 환자에게 아스피린을 투여한다.",
         " 항생제는 세균 감염 치료에 사용된다.", " 고혈압은 심혈관 질환의 주요 위험 인자이다."]


def _batches(tokenizer, n=2):
    ids = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
           for t in TEXTS]
    width = min(map(len, ids))
    input_ids = torch.tensor([row[:width] for row in ids])
    batch = {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids),
             "position_ids": torch.arange(width).expand_as(input_ids).clone()}
    return DataLoader([batch] * n, batch_size=None)


def _module(demo_model_path, demo_extended_tokenizer_path):
    seed_everything(0)
    return MedGemmaModule(str(demo_model_path), str(demo_extended_tokenizer_path), trainable="embeddings+lora",
                          lora=LoraOptions(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                          learning_rate=1e-2, warmup_steps=1, min_learning_rate=1e-3, save_trainable_only=True)


def _trainer(root, max_epochs, callbacks=()):
    return Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, callbacks=list(callbacks),
                   plugins=[AtomicCheckpointIO()], enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, default_root_dir=root)


def _evaluator(repo_root):
    return KorMedMCQAEval(source=str(repo_root / "medkor/assets/demo/kormedmcqa"), split="test", batch_size=16,
                          subsets=["doctor"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, demo_model_path, demo_extended_tokenizer_path, repo_root):
    """One epoch of the demo model (LoRA, trainable-only checkpoints) saved through AtomicCheckpointIO."""
    root = tmp_path_factory.mktemp("fit")
    module = _module(demo_model_path, demo_extended_tokenizer_path)
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", filename="e{epoch}", save_top_k=-1, save_last=True)
    trainer = _trainer(root, 1, [ckpt, _evaluator(repo_root)])
    trainer.fit(module, train_dataloaders=_batches(module.tokenizer))
    return {"root": root, "dir": root / "ckpt", "path": root / "ckpt" / "eepoch=0.ckpt",
            "module": module}


def _malicious(path: Path, marker: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, path)
    return path


# ---- saving ------------------------------------------------------------------------------------------------

def _half_then_no_space(real_save):
    def fake_save(obj, handle, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return fake_save


def _assert_no_space_error(err: OSError, path: Path) -> None:
    text = str(err)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(path) in text and "No space left on device" in text
    assert "Free space" in text and "dirpath" in text
    assert "\n" not in text


def test_failed_overwrite_keeps_the_old_checkpoint_byte_for_byte(tmp_path, monkeypatch):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io_plugin.save_checkpoint({"state_dict": {"w": torch.arange(10.0)}, "epoch": 0}, path)  # folder created
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _half_then_no_space(torch.save))
    with pytest.raises(OSError) as info:
        io_plugin.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "epoch": 1}, path)
    _assert_no_space_error(info.value, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    monkeypatch.undo()
    assert io_plugin.load_checkpoint(path)["epoch"] == 0


def test_unpicklable_checkpoint_error_passes_through_and_leaves_nothing(tmp_path):
    path = tmp_path / "x.ckpt"
    with pytest.raises(Exception) as info:
        AtomicCheckpointIO().save_checkpoint({"fn": lambda: 0}, path)
    assert not isinstance(info.value, OSError)
    assert list(tmp_path.iterdir()) == []


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs, if this process may mount one (root in a container with CAP_SYS_ADMIN)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_disk_keeps_the_old_checkpoint_and_frees_the_temp_file(small_tmpfs):
    io_plugin = AtomicCheckpointIO()
    path = small_tmpfs / "last.ckpt"
    io_plugin.save_checkpoint({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 0}, path)
    before = path.read_bytes()
    used = shutil.disk_usage(small_tmpfs).used
    with pytest.raises(OSError) as info:  # 4 MB of tensor onto 2 MiB
        io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(1_000_000)}, "epoch": 1}, path)
    _assert_no_space_error(info.value, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["last.ckpt"]
    assert shutil.disk_usage(small_tmpfs).used == used
    assert io_plugin.load_checkpoint(path)["epoch"] == 0


# ---- loading -----------------------------------------------------------------------------------------------

def test_real_medkor_checkpoint_loads_with_weights_only(fitted):
    names = sorted(p.name for p in fitted["dir"].iterdir())
    assert names == ["eepoch=0.ckpt", "last.ckpt"] and leftover_temp_files(fitted["dir"]) == []
    assert not (fitted["dir"] / "last.ckpt").is_symlink()  # save_last=True writes through the plugin
    checkpoint = AtomicCheckpointIO().load_checkpoint(fitted["path"])
    assert isinstance(checkpoint["hyper_parameters"]["lora"], LoraOptions)
    assert checkpoint["hyper_parameters"]["lora"].r == 2
    assert checkpoint["optimizer_states"][0]["state"] and checkpoint["lr_schedulers"][0]["last_epoch"] == 2
    assert any(key.startswith("KorMedMCQAEval") for key in checkpoint["callbacks"])
    assert any(key.startswith("ModelCheckpoint") for key in checkpoint["callbacks"])
    expected = {k: v for k, v in fitted["module"].state_dict().items() if k in checkpoint["state_dict"]}
    assert expected and all(torch.equal(checkpoint["state_dict"][k], v) for k, v in expected.items())
    mapped = load_checkpoint_file(fitted["path"], mmap=True)
    assert all(torch.equal(mapped["state_dict"][k], v) for k, v in checkpoint["state_dict"].items())


def test_resume_goes_through_the_plugin_with_weights_only(fitted, demo_model_path, demo_extended_tokenizer_path,
                                                          repo_root, tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    module = _module(demo_model_path, demo_extended_tokenizer_path)
    evaluator = _evaluator(repo_root)
    trainer = _trainer(tmp_path, 2, [ModelCheckpoint(dirpath=tmp_path / "ckpt"), evaluator])
    trainer.fit(module, train_dataloaders=_batches(module.tokenizer), ckpt_path=str(fitted["path"]))
    assert calls and all(flag is True for flag in calls)
    assert trainer.global_step == 4 and trainer.current_epoch == 2
    assert evaluator.baseline is not None and evaluator.baseline["step"] == 0  # restored, not re-run at step 2


def test_weights_only_false_is_refused(fitted):
    with pytest.raises(ValueError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(fitted["path"], weights_only=False)


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = _malicious(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointLoadError) as info:
        AtomicCheckpointIO().load_checkpoint(path)
    text = str(info.value)
    assert str(path) in text and "refused" in text and "system" in text and "\n" not in text
    assert info.value.__suppress_context__  # one paragraph, not the unpickler's page
    assert not marker.exists()


def test_truncated_and_foreign_files_say_so(fitted, tmp_path):
    data = fitted["path"].read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    for name, expected in [("half.ckpt", "truncated"), ("text.ckpt", "not a checkpoint"), ("empty.ckpt", "empty")]:
        with pytest.raises(CheckpointLoadError, match=expected) as info:
            load_checkpoint_file(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and len(str(info.value)) < 600
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_checkpoint_file(tmp_path / "missing.ckpt")


def test_trainer_refuses_a_malicious_checkpoint(tmp_path, demo_model_path, demo_extended_tokenizer_path):
    marker = tmp_path / "ran"
    path = _malicious(tmp_path / "evil.ckpt", marker)
    module = _module(demo_model_path, demo_extended_tokenizer_path)
    with pytest.raises(CheckpointLoadError, match="refused"):
        _trainer(tmp_path, 1).fit(module, train_dataloaders=_batches(module.tokenizer), ckpt_path=str(path))
    assert not marker.exists()


def test_export_refuses_a_malicious_checkpoint(tmp_path, demo_model_path, demo_extended_tokenizer_path, capsys):
    marker = tmp_path / "ran"
    path = _malicious(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ValueError, match="refused"):
        export_command.load_checkpoint(object(), str(path))
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  model_name_or_path: {demo_model_path}\n"
                      f"  tokenizer_path: {demo_extended_tokenizer_path}\n  trainable: embeddings\n"
                      f"data:\n  data_dir: {tmp_path}\n", encoding="utf-8")
    code = export_command.main(["--config", str(config), "--ckpt_path", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "medkor export: error" in err and "refused" in err and str(path) in err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- damaged files ---------------------------------------------------------------------------------------------

def _flip_mantissa_bits(source: Path, target: Path) -> str:
    """A copy of `source` with the lowest mantissa bit of a few float32 values of its largest tensor flipped."""
    from medkor.run.zip_crc import _records

    record = max((r for r in _records(str(source)) if "/data/" in r.name), key=lambda r: r.size)
    data = bytearray(source.read_bytes())
    for k in range(4):  # little-endian float32: the first byte holds the lowest mantissa bits
        data[record.offset + 4 * (k * 97 % (record.size // 4))] ^= 0x01
    target.write_bytes(bytes(data))
    return record.name


def test_flipped_mantissa_bits_are_refused_in_one_line(fitted, tmp_path):
    damaged = tmp_path / "last.ckpt"
    shutil.copy(fitted["path"], tmp_path / "epoch0.ckpt")
    record = _flip_mantissa_bits(fitted["dir"] / "last.ckpt", damaged)
    # torch itself loads it: the values are merely different
    assert torch.load(damaged, weights_only=True, map_location="cpu")["state_dict"]
    for load in (lambda: load_checkpoint_file(damaged), lambda: load_checkpoint_file(damaged, mmap=True),
                 lambda: AtomicCheckpointIO().load_checkpoint(damaged)):
        with pytest.raises(CheckpointLoadError) as info:
            load()
        text = str(info.value)
        assert text.startswith(f"{damaged}: the checkpoint is damaged") and "\n" not in text, text
        assert record in text and "CRC-32" in text
        assert f"give --ckpt_path another checkpoint (whose CRC-32s check, newest first, in {tmp_path}: epoch0.ckpt)" in text
        assert "Resume" not in text  # worded for every command that takes --ckpt_path (fit, validate, export)
    # the undamaged original still loads (and is checked once per process)
    assert load_checkpoint_file(fitted["dir"] / "last.ckpt")["state_dict"]


def test_resume_and_export_refuse_a_damaged_checkpoint_before_training(
        fitted, tmp_path, demo_model_path, demo_extended_tokenizer_path, capsys):
    damaged = tmp_path / "damaged.ckpt"
    _flip_mantissa_bits(fitted["path"], damaged)
    module = _module(demo_model_path, demo_extended_tokenizer_path)
    trainer = _trainer(tmp_path, 2, [ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    with pytest.raises(CheckpointLoadError, match="damaged"):
        trainer.fit(module, train_dataloaders=_batches(module.tokenizer), ckpt_path=str(damaged))
    assert trainer.global_step == 0 and not (tmp_path / "ckpt").exists()
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  model_name_or_path: {demo_model_path}\n"
                      f"  tokenizer_path: {demo_extended_tokenizer_path}\n  trainable: embeddings+lora\n"
                      f"  lora:\n    r: 2\n    alpha: 4\n    target_modules: [q_proj, v_proj]\n"
                      f"data:\n  data_dir: {tmp_path}\n", encoding="utf-8")
    capsys.readouterr()  # what the fit above printed
    code = export_command.main(["--config", str(config), "--ckpt_path", str(damaged), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("medkor export: error:"), err  # before the model builds
    assert str(damaged) in err[0] and "damaged" in err[0] and not (tmp_path / "out").exists()


def test_the_damaged_checkpoint_message_lists_only_other_checkpoints_whose_crcs_check(fitted, tmp_path):
    import os
    import time

    damaged = tmp_path / "last.ckpt"
    _flip_mantissa_bits(fitted["dir"] / "last.ckpt", damaged)
    now = time.time()
    for age, name in enumerate(["new.ckpt", "mid.ckpt", "old.ckpt", "oldest.ckpt"]):
        shutil.copy(fitted["path"], tmp_path / name)
        os.utime(tmp_path / name, (now - 10 * (age + 1), now - 10 * (age + 1)))
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")  # newer than all of them, and not a checkpoint
    _flip_mantissa_bits(fitted["path"], tmp_path / "trunc.ckpt")  # damaged itself
    with pytest.raises(CheckpointLoadError) as info:
        load_checkpoint_file(damaged)
    assert f"newest first, in {tmp_path}: new.ckpt, mid.ckpt, old.ckpt)" in str(info.value)
    for name in ("new.ckpt", "mid.ckpt", "old.ckpt", "oldest.ckpt", "bad.ckpt", "trunc.ckpt"):
        (tmp_path / name).unlink()
    with pytest.raises(CheckpointLoadError, match=r"give --ckpt_path another checkpoint \(none in \S+ has CRC-32s"):
        load_checkpoint_file(damaged)
