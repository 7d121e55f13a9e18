"""`medkor cache rm` says removed only of what is gone (links removed as links), and the
cache's free-space refusal gives readable sizes."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from medkor.commands import cache as cache_cmd
from medkor.data import cache as cache_mod
from medkor.data import inventory
from medkor.data.cache import CacheError

KEY = "0123456789abcdef0123"


def _cache_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "rows.arrow").write_bytes(b"rows")
    return path


def test_rm_removes_a_linked_cache_as_a_link_and_keeps_its_target(tmp_path, capsys):
    target = _cache_folder(tmp_path / "elsewhere" / f"train-{KEY}")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    link = cache_dir / f"train-{KEY}"
    link.symlink_to(target, target_is_directory=True)

    assert cache_cmd.main(["rm", str(cache_dir), "--all"]) == 0
    out = capsys.readouterr().out
    assert not link.exists() and not link.is_symlink()
    assert (target / "rows.arrow").read_bytes() == b"rows"  # never entered
    assert f"removed {link} (a link; its target {target} is kept)" in out
    assert not list(cache_dir.glob(".trash-*"))


def test_rm_reports_a_folder_it_could_not_remove_and_never_says_removed(tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    folder = _cache_folder(cache_dir / f"train-{KEY}")

    def stubborn_rmtree(path, onerror=None, **_):  # a file system that refuses the deletion
        onerror(None, str(Path(path) / "rows.arrow"), (PermissionError, PermissionError(13, "Permission denied"), None))

    monkeypatch.setattr(inventory.shutil, "rmtree", stubborn_rmtree)
    assert cache_cmd.main(["rm", str(cache_dir), "--all"]) == 1
    captured = capsys.readouterr()
    assert "removed" not in captured.out
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("medkor cache rm: error: ") and str(folder) in line and "Permission denied" in line
    assert "run medkor cache rm again" in line


def test_free_space_refusal_names_sizes_a_person_can_read(tmp_path, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"x" * 3000)
    request = SimpleNamespace(selection=SimpleNamespace(files=[data]), cache_dir=tmp_path, split="train")
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 1200))
    with pytest.raises(CacheError) as err:
        cache_mod._check_disk(request)
    message = str(err.value)
    assert "0.00 GiB" not in message
    assert "needs about 13.2 KiB free, only 1.2 KiB is" in message
