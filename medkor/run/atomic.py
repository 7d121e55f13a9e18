"""Atomic file writes: a file appears whole under its name, or not at all.

`atomic_open(path)` hands out a temporary file in the same folder as `path`
(`.<name>.tmp-<host>-<pid>-<random>`); when the block ends without an error the data is
flushed and fsynced, the temporary file is renamed onto `path` with `os.replace`
(atomic on POSIX and Windows within one file system) and the folder is fsynced, so
the new name survives a power cut. If anything fails (a full disk, a permission
error, an exception in the writer) the temporary file is removed and `path` keeps
whatever it held before, byte for byte. A process killed in the middle leaves only
the temporary file, which `leftover_temp_files` finds; `medkor.run.publish.sweep_leftovers`
deletes those whose writer is no longer alive on this host (`writer_alive`).

Failures that come from the operating system are raised as `AtomicWriteError`, an
`OSError` with the original `errno` whose message names the file, the cause and what
to do. Other exceptions from the writer (a pickling error, Ctrl-C) pass through
unchanged, after the same clean-up.

Plain Python (no Lightning, no torch), usable from scripts.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

TEMP_MARK = ".tmp-"
# .<name>.tmp-<host>-<pid>-<8 hex>; files of earlier versions have no host
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)-[0-9a-f]{8}$")
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}
# Folders on some file systems (certain FUSE and network mounts) cannot be fsynced; the rename still happened.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL),
                          getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


class AtomicWriteError(OSError):
    """Writing `filename` failed; nothing under that name changed. `errno` is the cause's."""

    def __init__(self, path: PathLike, cause: OSError, message: str) -> None:
        super().__init__(cause.errno, message)
        self.filename = os.fspath(path)
        self.message = message

    def __str__(self) -> str:
        return self.message


def host_tag() -> str:
    """This host's name as it goes into leftover names: letters, digits and `_` only, at most 40."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def writer_alive(host: Optional[str], pid: int) -> bool:
    """Whether the process that named a leftover may still be writing it.

    Processes of other hosts count as alive (they cannot be checked from here). A
    leftover without a host (written by an earlier version) is judged on this host.
    """
    if host is not None and host != host_tag():
        return True
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return True
    return True


def temp_path_for(path: PathLike) -> Path:
    """A fresh temporary name next to `path`: `.<name>.tmp-<host>-<pid>-<8 hex>`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")


def leftover_temp_files(folder: PathLike, name: Optional[str] = None) -> list[Path]:
    """Temporary files of atomic writes in `folder` (of the final name `name`, if given).

    Outside a running write they are what interrupted writes (a killed process) left
    behind; none is ever read back, so they can be deleted.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = TEMP_RE.match(entry.name)
        if match and (name is None or match["name"] == name) and entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return sorted(found)


def fsync_dir(path: PathLike) -> None:
    """Make the folder's entries (a rename, a new file) durable. A no-op where folders cannot be fsynced."""
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals renames itself
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def fsync_file(target: Union[PathLike, int, BinaryIO]) -> None:
    """Flush and fsync an open file (object or descriptor), or a file given by path."""
    if isinstance(target, int):
        os.fsync(target)
    elif hasattr(target, "fileno"):
        if hasattr(target, "flush"):
            target.flush()
        os.fsync(target.fileno())
    else:
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())


def human_size(size: float) -> str:
    """Bytes in the unit that keeps the figure readable: `512 B`, `3.0 MiB`, `1.2 GiB`, `2.5 TiB`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _free_space(folder: Path) -> Optional[str]:
    """Free space on the file system of `folder` (or of its nearest existing parent), readable."""
    import shutil

    for probe in (folder, *folder.parents):
        try:
            return human_size(shutil.disk_usage(probe).free)
        except OSError:
            continue
    return None


def _os_error_in(err: BaseException) -> Optional[OSError]:
    """`err` itself if it is an OSError, else the first OSError it was raised from or during.

    torch.save reports a failed write of the file object it is given as a RuntimeError
    raised while handling the OSError of the write, so the cause is looked up the chain.
    """
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _describe(path: Path, cause: OSError, what: str, elsewhere: str) -> str:
    reason = cause.strerror or str(cause) or type(cause).__name__
    code = errno.errorcode.get(cause.errno, "") if cause.errno is not None else ""
    text = f"cannot write {what} {path}: {reason}" + (f" ({code})" if code else "") + "."
    if cause.errno in _NO_SPACE:
        free = _free_space(path.parent)
        text += (f" {free} free there." if free else "") + f" Free space on that file system or {elsewhere}."
        leftovers = leftover_temp_files(path.parent)
        if leftovers:
            size = sum(p.stat().st_size for p in leftovers if p.exists())
            text += (f" {len(leftovers)} temporary file(s) of interrupted writes in {path.parent} "
                     f"({human_size(size)}, named .<name>{TEMP_MARK}*) can be deleted if no other process "
                     "is writing there.")
    elif cause.errno in _NOT_ALLOWED:
        text += f" Make {path.parent} writable or {elsewhere}."
    return text + " Nothing was written under that name; a file already there is unchanged."


def _make_folder(folder: Path) -> None:
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in missing:  # the new folders' own names must survive a power cut too
        fsync_dir(created.parent)


def _discard(handle: BinaryIO, tmp: Path) -> None:
    try:
        handle.close()  # may fail again flushing its buffer onto the full disk
    except OSError:
        pass
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_open(
    path: PathLike, *, what: str = "file", elsewhere: str = "write to a folder on a larger disk"
) -> Iterator[BinaryIO]:
    """A binary file to write; on a clean exit it replaces `path` atomically and durably.

    Args:
        path: the final name; its folder is created if missing.
        what: what the file is, for error messages (`checkpoint`, `predictions file`).
        elsewhere: the alternative an error message offers after "free space" (how to
            choose another folder for this kind of file).

    Raises:
        AtomicWriteError: the folder, the temporary file, a write, the fsync or the
            rename failed at the OS level; the temporary file is gone and `path` is as
            it was.
    """
    path = Path(path)
    try:
        _make_folder(path.parent)
        tmp = temp_path_for(path)
        # 0o666 minus the umask, as a plain open() would create it (mkstemp would make it private).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise AtomicWriteError(path, err, _describe(path, err, what, elsewhere)) from err
    handle = os.fdopen(fd, "wb")
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.replace(tmp, path)
    except BaseException as err:
        _discard(handle, tmp)
        cause = None if isinstance(err, (AtomicWriteError, KeyboardInterrupt, SystemExit)) else _os_error_in(err)
        if cause is None:
            raise
        raise AtomicWriteError(path, cause, _describe(path, cause, what, elsewhere)) from cause
    fsync_dir(path.parent)


def atomic_write(path: PathLike, write_fn: Callable[[BinaryIO], object], **kwargs) -> Path:
    """Call `write_fn(handle)` on a temporary binary file and publish it as `path` (see `atomic_open`)."""
    with atomic_open(path, **kwargs) as handle:
        write_fn(handle)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes, **kwargs) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda handle: handle.write(data), **kwargs)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8", **kwargs) -> Path:
    """Write `text` to `path` atomically (newlines written as given)."""
    return atomic_write_bytes(path, text.encode(encoding), **kwargs)
