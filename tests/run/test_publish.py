"""medkor.run.publish: a folder is replaced whole or not at all, kills included; leftovers of dead writers swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medkor.run import publish
from medkor.run.atomic import host_tag
from medkor.run.publish import (
    PublishError, marker_files, publish_folder, staging_for, sweep_leftovers, write_marker,
)

ROOT = Path(__file__).resolve().parents[2]
OLD = {"a.txt": "old a", "sub/b.txt": "old b"}
NEW = {"a.txt": "new a", "c.bin": "new c"}


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _read(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stage(target: Path, files: dict[str, str]) -> Path:
    staging = staging_for(target)
    _write(staging, files)
    return staging


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


def test_a_new_folder_is_renamed_in_and_nothing_is_left_beside_it(tmp_path):
    target = tmp_path / "out"
    staging = _stage(target, NEW)
    assert staging.parent == tmp_path and staging.name.startswith(f".out.partial-{host_tag()}-{os.getpid()}-")
    assert publish_folder(staging, target) == target
    assert _read(target) == NEW and _siblings(target) == []


@pytest.mark.parametrize("can_exchange", [True, False])
def test_an_existing_folder_is_replaced_whole_by_exchange_or_by_the_fallback(tmp_path, monkeypatch, can_exchange):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, OLD)
    if not can_exchange:
        monkeypatch.setattr(publish, "exchange", lambda a, b: False)
    publish_folder(_stage(target, NEW), target)
    assert _read(target) == NEW and _siblings(target) == []


def test_the_exchange_is_a_real_atomic_swap_on_this_system(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not publish.exchange(a, b):
        pytest.skip("this file system cannot exchange names")
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


def test_without_renameat2_a_new_folder_never_replaces_one_that_appeared(tmp_path, monkeypatch):
    monkeypatch.setattr(publish.sys, "platform", "darwin")  # no renameat2: plain renames, then the fallback
    assert publish.exchange(tmp_path, tmp_path) is False
    target = tmp_path / "out"
    publish_folder(_stage(target, OLD), target)
    publish_folder(_stage(target, NEW), target)
    assert _read(target) == NEW and _siblings(target) == []
    staging = _stage(target, OLD)
    with pytest.raises(FileExistsError):
        publish._rename_new(staging, target)  # what another writer's folder would meet
    assert _read(target) == NEW


def test_kept_entries_are_the_same_files_and_the_rest_is_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, {**OLD, "notes.txt": "mine", "data/big.bin": "user data"})
    (target / "link").symlink_to("/etc/hostname")
    inode = (target / "notes.txt").stat().st_ino
    publish_folder(_stage(target, NEW), target, keep=["notes.txt", "data", "link", "not-there"])
    assert _read(target) == {**NEW, "notes.txt": "mine", "data/big.bin": "user data"}
    assert (target / "notes.txt").stat().st_ino == inode  # hard-linked, not copied
    assert os.readlink(target / "link") == "/etc/hostname"
    assert _siblings(target) == []


def test_a_kept_name_that_the_new_folder_also_has_is_refused_before_anything_changes(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, OLD)
    with pytest.raises(PublishError, match=r"out holds a.txt, which this command did not write"):
        publish_folder(_stage(target, NEW), target, keep=["a.txt"])
    assert _read(target) == OLD and _siblings(target) == []


def test_a_symbolic_link_or_a_file_as_target_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    _write(real, OLD)
    link = tmp_path / "out"
    link.symlink_to(real)
    with pytest.raises(PublishError, match="is a symbolic link"):
        publish_folder(_stage(link, NEW), link)
    assert link.is_symlink() and _read(real) == OLD
    (tmp_path / "file").write_text("x")
    with pytest.raises(PublishError, match="is a file, not a folder"):
        publish_folder(_stage(tmp_path / "file", NEW), tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out", "real"]


def test_files_written_into_the_old_folder_during_the_publish_are_moved_into_the_new_one(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    _write(target, OLD)
    real = publish.exchange

    def late_writer(a, b):
        (target / "late.txt").write_text("written meanwhile")
        return real(a, b)

    monkeypatch.setattr(publish, "exchange", late_writer)
    publish_folder(_stage(target, NEW), target)
    assert _read(target) == {**NEW, "late.txt": "written meanwhile"}


def test_os_errors_name_the_target_and_leave_it_unchanged(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "out"
    target.mkdir()
    _write(target, OLD)

    def full(a, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(publish, "exchange", full)
    with pytest.raises(PublishError, match=r"cannot publish .*out: No space left on device \(\d.* (B|KiB|MiB|GiB|TiB) "
                                           r"free on the file system of .*\); free space .* is unchanged"):
        publish_folder(_stage(target, NEW), target)
    assert _read(target) == OLD and _siblings(target) == []


def test_sweep_removes_dead_writers_leftovers_and_keeps_live_and_other_hosts(tmp_path):
    dead, host = _dead_pid(), host_tag()
    target = tmp_path / "out"
    target.mkdir()
    gone = [f".out.partial-{host}-{dead}-0123abcd", ".out.partial-4194304", f".out.old-{host}-{dead}-0123abcd",
            f".model.safetensors.tmp-{host}-{dead}-0123abcd", f".epoch00-step24.ckpt.tmp-{dead}-deadbeef"]
    alive = [f".out.partial-{host}-{os.getppid()}-0123abcd", f".out.partial-otherhost-{dead}-0123abcd",
             f".out.tmp-{host}-{os.getpid()}-0123abcd", ".hidden", "version_0"]
    for name in gone + alive:
        if ".tmp-" in name or name == ".hidden":
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text("x")
    assert sorted(p.name for p in sweep_leftovers(tmp_path)) == sorted(gone)
    assert sorted(_siblings(target)) == sorted(alive)
    assert sweep_leftovers(tmp_path) == []


def test_sweep_restores_an_old_copy_whose_target_is_missing_and_only_for_the_name_asked(tmp_path):
    dead = _dead_pid()
    old = tmp_path / f".out.old-{host_tag()}-{dead}-0123abcd"
    old.mkdir()
    _write(old, OLD)
    other = tmp_path / f".other.partial-{host_tag()}-{dead}-0123abcd"
    other.mkdir()
    assert sweep_leftovers(tmp_path, "out") == [old]
    assert _read(tmp_path / "out") == OLD and other.is_dir()


def test_markers_list_what_a_command_wrote(tmp_path):
    write_marker(tmp_path, "export", ["b", "a", "a"])
    assert marker_files(tmp_path, "export") == {"a", "b", ".medkor-export.json"}
    assert marker_files(tmp_path, "extend-vocab") is None
    (tmp_path / ".medkor-extend-vocab.json").write_text('{"files": ["../escape"]}')
    assert marker_files(tmp_path, "extend-vocab") is None  # a hand-edited marker never names paths


# ---------------------------------------------------------------- kills

CHILD = """
import sys
from pathlib import Path
from medkor.run import publish

target = Path(sys.argv[1])
if sys.argv[2] == "fallback":
    publish.exchange = lambda a, b: False
staging = publish.staging_for(target)
for name, text in {new!r}.items():
    (staging / name).write_text(text)
publish.publish_folder(staging, target, keep=["mine.txt"])
print("published")
"""


@pytest.mark.parametrize("existing", [True, False])
@pytest.mark.parametrize("mode,point", [("exchange", "staged"), ("exchange", "exchanged"), ("exchange", "renamed"),
                                        ("fallback", "staged"), ("fallback", "old-aside"), ("fallback", "renamed")])
def test_a_kill_at_any_step_leaves_old_or_new_whole_and_the_next_start_sweeps(tmp_path, mode, point, existing):
    target = tmp_path / "out"
    old = {**OLD, "mine.txt": "user file"} if existing else None
    if existing:
        target.mkdir()
        _write(target, old)
    env = {**os.environ, publish.KILL_ENV: point}
    result = subprocess.run([sys.executable, "-c", CHILD.format(new=NEW), str(target), mode], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    new = {**NEW, "mine.txt": "user file"} if existing else NEW
    reached = {"staged": True, "exchanged": existing and mode == "exchange",
               "old-aside": existing and mode == "fallback", "renamed": not existing or mode == "fallback"}[point]
    assert (result.returncode == -signal.SIGKILL) == reached, result.stdout + result.stderr
    killed_state = {"staged": old, "exchanged": new, "old-aside": None, "renamed": new}[point]
    on_disk = _read(target) if target.exists() else None
    assert on_disk == (killed_state if reached else new)
    sweep_leftovers(tmp_path)  # what the next publish of the same folder does first
    assert (_read(target) if target.exists() else None) == (old if reached and point == "old-aside" else on_disk)
    assert _siblings(target) == []


@pytest.mark.slow
def test_a_resumed_fit_sweeps_the_temporary_checkpoint_files_of_dead_writers(repo_root, tmp_path):
    from tests.run.resume_config import resume_config, write_config

    config = resume_config(repo_root, tmp_path / "logs", 1, 2, [])
    config["data"].update(cache_dir=str(tmp_path / "cache"))
    path = write_config(config, tmp_path / "run.yaml")
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def fit(*args):
        return subprocess.run([sys.executable, "-m", "medkor", "fit", "--config", str(path), *args], cwd=repo_root,
                              env=env, capture_output=True, text=True, timeout=400)

    assert fit().returncode == 0
    checkpoints = tmp_path / "logs" / "demo" / "version_0" / "checkpoints"
    dead = checkpoints / f".step1.ckpt.tmp-{host_tag()}-{_dead_pid()}-0123abcd"  # a write killed mid-way
    live = checkpoints / f".step1.ckpt.tmp-{host_tag()}-{os.getpid()}-0123abcd"  # a process still writing
    for leftover in (dead, live):
        leftover.write_bytes(b"\0" * 1000)
    result = fit("--ckpt_path", "last", "--trainer.max_epochs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not dead.exists() and live.exists()
    assert f"removed 1 temporary file(s) of interrupted checkpoint writes: {dead.name}" in result.stderr + result.stdout


@pytest.mark.parametrize("can_exchange", [True, False])
@pytest.mark.parametrize("mode", [0o700, 0o750, 0o711])
def test_the_new_folder_keeps_the_old_folders_permission_bits(tmp_path, monkeypatch, can_exchange, mode):
    target = tmp_path / "private"
    target.mkdir()
    _write(target, OLD)
    os.chmod(target, mode)
    if not can_exchange:
        monkeypatch.setattr(publish, "exchange", lambda a, b: False)
    staging = _stage(target, NEW)
    os.chmod(staging, 0o755)  # what a umask of 022 gives a new folder
    inode = target.stat().st_ino
    publish_folder(staging, target)
    assert target.stat().st_ino != inode and _read(target) == NEW
    assert oct(target.stat().st_mode & 0o7777) == oct(mode)
    assert target.stat().st_gid == os.stat(tmp_path).st_gid or target.stat().st_gid == os.getgid()


def test_foreign_files_are_those_no_marker_of_the_command_lists(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "notes.txt"):
        (folder / name).write_text("mine")
    names = {"config.json", "tokenizer.json", "model.safetensors"}
    assert publish.foreign_files(folder, "export", names) == ["config.json", "tokenizer.json"]
    write_marker(folder, "extend-vocab", ["tokenizer.json"])  # another command's marker does not make it export's
    assert publish.foreign_files(folder, "export", names) == ["config.json", "tokenizer.json"]
    write_marker(folder, "export", ["config.json"])
    assert publish.foreign_files(folder, "export", names) == ["tokenizer.json"]
    line = publish.foreign_files_message(folder, "export", ["tokenizer.json"])
    assert "\n" not in line and "tokenizer.json" in line and "remove it" in line and "new folder" in line
