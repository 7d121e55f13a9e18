"""Export targets: refused when not empty, replaced only in what an earlier export wrote, never half-written."""

from __future__ import annotations

import json
import os

import pytest

from medkor.run.export_folder import (
    MARKER, ExportFolderError, check_export_target, publish_export, staging_folder,
)
from medkor.run.folders import discard_if_unused


def _stage(out, files: dict[str, str]):
    staging = staging_folder(out)
    for name, text in files.items():
        (staging / name).write_text(text)
        os.chmod(staging / name, 0o600)  # as a save through a temporary file leaves it
    return staging


def test_new_folder_gets_the_export_and_its_marker(tmp_path):
    out = tmp_path / "export"
    publish_export(_stage(out, {"config.json": "{}", "model.safetensors": "w1"}), out, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "config.json", "model.safetensors"])
    assert json.loads((out / MARKER).read_text())["files"] == ["config.json", "model.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    assert {(p.stat().st_mode & 0o777) for p in out.iterdir() if p.name != MARKER} == {0o666 & ~umask}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left"


def test_non_empty_folder_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportFolderError, match=r"not empty \(notes.txt\); it holds no earlier export"):
        check_export_target(out, overwrite=False)
    check_export_target(out, overwrite=True)


def test_overwrite_replaces_what_the_earlier_export_wrote_and_keeps_other_files(tmp_path):
    out = tmp_path / "export"
    publish_export(_stage(out, {"config.json": "old", "model-00001-of-00002.safetensors": "a",
                                "model-00002-of-00002.safetensors": "b", "model.safetensors.index.json": "{}"}),
                   out, overwrite=False)
    (out / "notes.txt").write_text("mine")
    publish_export(_stage(out, {"config.json": "new", "model.safetensors": "w"}), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "config.json", "model.safetensors", "notes.txt"])
    assert (out / "config.json").read_text() == "new" and (out / "notes.txt").read_text() == "mine"


def test_overwrite_of_an_output_without_marker_is_refused_and_changes_nothing(tmp_path):
    # Without a marker nobody can tell an earlier export from a user's own model folder:
    # Hugging Face file names alone are no proof, so nothing of it is replaced.
    out = tmp_path / "export"
    out.mkdir()
    names = ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "train.py")
    for name in names:
        (out / name).write_text("x")
    staging = _stage(out, {"config.json": "new", "model.safetensors": "w"})
    with pytest.raises(ExportFolderError, match="config.json, which medkor export did not write"):
        publish_export(staging, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert all((out / name).read_text() == "x" for name in names)


def test_a_failed_start_folder_is_discarded_but_not_one_with_results(tmp_path):
    empty = tmp_path / "version_0"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "hparams.yaml").write_text("lr: 1\n")
    (empty / "metrics.csv").write_text("epoch,step,train/loss\n")
    (empty / "events.out.tfevents.1.host").write_bytes(b"x" * 5000)
    assert discard_if_unused(empty) and not empty.exists()
    for extra in ["metrics.csv", "checkpoints/last.ckpt", "kormedmcqa/summary.json", "notes.txt"]:
        kept = tmp_path / f"keep-{extra.replace('/', '-')}"
        (kept / extra).parent.mkdir(parents=True, exist_ok=True)
        (kept / extra).write_text("epoch,step\n0,1\n" if extra == "metrics.csv" else "x")
        assert not discard_if_unused(kept) and (kept / extra).is_file(), extra


def test_export_command_refuses_a_non_empty_folder_before_loading_anything(repo_root, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = ("import sys\nfrom medkor.cli import main\ntry:\n    main(['export', '--config', 'configs/demo.yaml', "
            f"'--out', {str(out)!r}])\nexcept SystemExit as e:\n    print('EXIT', e.code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert "EXIT 2 False" in result.stdout, result.stdout + result.stderr
    assert "folder is not empty (notes.txt); it holds no earlier export" in result.stderr
