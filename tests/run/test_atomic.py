"""medkor.run.atomic: whole files or none, the old file kept on any failure, errors that say what to do."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medkor.run.atomic import (
    AtomicWriteError,
    atomic_open,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    host_tag,
    human_size,
    leftover_temp_files,
    temp_path_for,
    writer_alive,
)

ROOT = Path(__file__).resolve().parents[2]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_whole_file_creating_folders_with_ordinary_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(target, "당뇨병\n") == target
    assert target.read_text(encoding="utf-8") == "당뇨병\n"
    assert _names(target.parent) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0o600


def test_overwrite_replaces_and_a_symlink_name_is_replaced_not_followed(tmp_path):
    real = tmp_path / "epoch1.ckpt"
    real.write_bytes(b"epoch 1")
    link = tmp_path / "last.ckpt"
    link.symlink_to(real.name)
    atomic_write_bytes(link, b"epoch 2")
    assert not link.is_symlink() and link.read_bytes() == b"epoch 2"
    assert real.read_bytes() == b"epoch 1"  # a plain open() would have written through the link


def test_os_error_mid_write_keeps_old_file_and_names_path_cause_and_remedy(tmp_path):
    target = tmp_path / "memo.json"
    target.write_bytes(b"old content")

    def half_then_full(handle):
        handle.write(b"new con")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(AtomicWriteError) as info:
        atomic_write(target, half_then_full, what="memo", elsewhere="point it somewhere bigger")
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == str(target)
    text = str(err)
    assert str(target) in text and "No space left on device" in text
    assert "Free space" in text and "point it somewhere bigger" in text and "unchanged" in text
    assert re.search(r"\. \d+(\.\d)? (B|KiB|MiB|GiB|TiB) free there\.", text), text  # how much is left, readable
    assert "\n" not in text
    assert target.read_bytes() == b"old content"
    assert _names(tmp_path) == ["memo.json"]


def test_os_error_raised_during_another_exception_is_found(tmp_path):
    """torch.save turns a failed write of its file object into a RuntimeError raised while handling it."""
    target = tmp_path / "x.bin"

    def wrapped(handle):
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError:
            raise RuntimeError("unexpected pos 704 vs 598")

    with pytest.raises(AtomicWriteError, match="quota") as info:
        atomic_write(target, wrapped)
    assert info.value.errno == errno.EDQUOT
    assert _names(tmp_path) == []


def test_other_exceptions_pass_through_after_clean_up(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"keep")
    with pytest.raises(KeyError):
        with atomic_open(target) as handle:
            handle.write(b"partial")
            raise KeyError("not an OS error")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"keep" and _names(tmp_path) == ["x.bin"]


def test_failure_creating_the_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(AtomicWriteError) as info:
        atomic_write_bytes(blocker / "sub" / "x.bin", b"data")
    assert str(blocker / "sub" / "x.bin") in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_permission_denied_says_so(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(AtomicWriteError, match="writable"):
            atomic_write_bytes(folder / "x.bin", b"data")
    finally:
        folder.chmod(0o755)


def test_temp_names_and_leftovers(tmp_path):
    tmp = temp_path_for(tmp_path / "last.ckpt")
    assert tmp.parent == tmp_path and tmp.name.startswith(f".last.ckpt.tmp-{host_tag()}-{os.getpid()}-")
    assert temp_path_for(tmp_path / "last.ckpt") != tmp
    tmp.write_bytes(b"x")
    (tmp_path / "last.ckpt").write_bytes(b"y")
    (tmp_path / ".hidden").write_bytes(b"z")
    assert leftover_temp_files(tmp_path) == [tmp]
    assert leftover_temp_files(tmp_path, "last.ckpt") == [tmp]
    assert leftover_temp_files(tmp_path, "other.ckpt") == []
    assert leftover_temp_files(tmp_path / "missing") == []


def test_sizes_read_in_the_unit_that_fits():
    assert [human_size(n) for n in (0, 1023, 1536, 3 * 2**20, 5 * 2**30 // 4, 3 * 2**40)] == [
        "0 B", "1023 B", "1.5 KiB", "3.0 MiB", "1.2 GiB", "3.0 TiB"]


def test_a_writer_is_alive_while_its_process_is_and_other_hosts_writers_always_count_as_alive():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert writer_alive(host_tag(), child.pid) and writer_alive(None, child.pid)
    finally:
        child.kill()
        child.wait()
    assert not writer_alive(host_tag(), child.pid) and not writer_alive(None, child.pid)
    assert writer_alive("some_other_node", child.pid) and writer_alive(host_tag(), os.getpid())


def test_no_space_message_points_at_leftovers_of_killed_writes(tmp_path):
    stale = tmp_path / ".epoch3.ckpt.tmp-999999-0123abcd"
    stale.write_bytes(b"\0" * 3 * 2**20)

    def full(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(AtomicWriteError, match=r"1 temporary file\(s\) .*3\.0 MiB.*can be deleted"):
        atomic_write(tmp_path / "last.ckpt", full)


def test_fsync_helpers(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fsync_file(path)
    with open(path, "ab") as handle:
        handle.write(b"y")
        fsync_file(handle)
        fsync_file(handle.fileno())
    fsync_dir(tmp_path)


CHILD = """
import sys, time
from medkor.run.atomic import atomic_open
with atomic_open(sys.argv[1]) as handle:
    handle.write(b"half of the new checkpoint")
    handle.flush()
    open(sys.argv[2], "w").close()
    time.sleep(60)
"""


def test_killed_writer_leaves_old_file_and_only_a_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(ready)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "writer did not start"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert target.read_bytes() == b"previous checkpoint"
    leftovers = leftover_temp_files(tmp_path, "last.ckpt")
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"half of the new checkpoint"
