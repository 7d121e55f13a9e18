"""Publish a folder whole: build it beside its final name, then swap it in.

A reader, a crash or a SIGKILL at any instant sees either the old folder or the new
one under the final name, never a mix and never nothing (where the file system can
exchange two names; see the fallback below):

    staging = staging_for(target)          # .<name>.partial-<host>-<pid>-<rand>/ beside target
    ... write the new folder's files into staging ...
    publish_folder(staging, target)        # fsync, then one rename or one exchange

`publish_folder` fsyncs every file and folder of the staging folder, then
- renames it onto `target` when `target` does not exist (refusing to replace
  anything that appeared meanwhile);
- otherwise exchanges the two names in one step (Linux `renameat2` with
  `RENAME_EXCHANGE`): `target` now holds the new folder and the staging name the
  old one, which is removed only then.
Where the exchange is refused (another OS, a file system without it), the old folder
is first renamed aside to `.<name>.old-<host>-<pid>-<rand>` and the new one renamed
in; killed between the two renames, `target` is missing for a moment and the next
`sweep_leftovers` renames the old folder back.

`keep` names entries of the current `target` that the new folder must carry on (the
user's own files beside an earlier run's output): they are hard-linked (copied
where links are refused) into the staging folder before the swap, so they are in
the folder under `target` at every instant. Entries that appear in `target` while
the new folder is published are moved into it, not deleted.

Leftovers carry the host and pid of their writer. `sweep_leftovers` removes those
of writers that are no longer alive on this host (staging folders, old copies whose
new folder is in place, temporary files of `medkor.run.atomic`), restores an old
copy whose target is missing, and never touches what a live process or another
host's process may still be writing.

`write_marker` / `marker_files` keep the one convention by which a command knows what
it wrote into a folder (`.medkor-<command>.json`, listing the files), so that an
overwrite replaces exactly those and keeps the rest.

Plain Python (no torch, no Lightning).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import sys
from pathlib import Path
from typing import Iterable, Optional, Union

from medkor.run.atomic import TEMP_RE, fsync_dir, host_tag, writer_alive

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger(__name__)

STAGING_MARK = ".partial-"
OLD_MARK = ".old-"
# .<name>.partial-<host>-<pid>-<8 hex> and .<name>.old-<host>-<pid>-<8 hex>; also the host-less
# .<name>.partial-<pid> / .<name>.old-<pid> that earlier exports left behind
_LEFTOVER_RE = re.compile(
    r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?:(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)-[0-9a-f]{8}|(?P<bare>\d+))$"
)
KILL_ENV = "MEDKOR_TEST_KILL_AT"  # tests only: SIGKILL this process at a named step of a publish
RENAME_EXCHANGE = 2
RENAME_NOREPLACE = 1
_AT_FDCWD = -100


class PublishError(OSError):
    """The new folder could not be put in place; `target` is as it was. The message names it."""

    def __init__(self, code: Optional[int], message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def kill_point(name: str) -> None:
    """Die here, without any clean-up, when the test environment names this step."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class TargetError(ValueError):
    """An output folder that no command may publish to; the message says what to give instead."""


def check_target(target: PathLike, option: str = "--out") -> None:
    """Refuse an output folder that a publish must not replace, before any work is done.

    Refused: a symbolic link (what it points at is not the command's to replace; the
    link itself would be turned into a folder), a file, and the working folder or any
    folder above it (replacing it would pull the ground from under the shell).
    """
    target = Path(target)
    if target.is_symlink():
        raise TargetError(f"{option} {target} is a symbolic link (to {os.readlink(target)}); give the folder it "
                          "points at, or a new name")
    if target.exists() and not target.is_dir():
        raise TargetError(f"{option} {target} is a file; give a folder")
    here, resolved = Path.cwd().resolve(), target.resolve()
    if resolved == here or resolved in here.parents:
        what = "the working folder" if resolved == here else f"a folder above the working folder {here}"
        raise TargetError(f"{option} {target} is {resolved}, {what}; give a new folder for the output, "
                          f"e.g. {option} ./out")


# ---------------------------------------------------------------- names

def staging_for(target: PathLike) -> Path:
    """A new, empty staging folder beside `target` (same file system), after sweeping dead writers' leftovers.

    Its name, `.<name>.partial-<host>-<pid>-<8 hex>`, tells `sweep_leftovers` whose it is.
    The parent folder is created if missing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target.parent, target.name)
    staging = _sibling(target, STAGING_MARK)
    staging.mkdir()
    return staging


def _sibling(target: Path, mark: str) -> Path:
    return target.with_name(f".{target.name}{mark}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")


# ---------------------------------------------------------------- syscalls

_libc = None


def _renameat2(source: Path, dest: Path, flags: int) -> None:
    """`renameat2(2)`; OSError(ENOSYS) where the C library or the OS has none."""
    global _libc
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2 exists on Linux only")
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    func = getattr(_libc, "renameat2", None)
    if func is None:  # glibc before 2.28
        raise OSError(errno.ENOSYS, "the C library has no renameat2")
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(dest), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), os.fspath(source), None, os.fspath(dest))


_EXCHANGE_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL),
                         getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def exchange(a: PathLike, b: PathLike) -> bool:
    """Swap the names `a` and `b` atomically; False where the OS or file system cannot."""
    try:
        _renameat2(Path(a), Path(b), RENAME_EXCHANGE)
    except OSError as err:
        if err.errno in _EXCHANGE_UNSUPPORTED:
            return False
        raise
    return True


def _rename_new(source: Path, dest: Path) -> None:
    """Rename `source` to `dest`, which must not exist (EEXIST if it appeared meanwhile)."""
    try:
        _renameat2(source, dest, RENAME_NOREPLACE)
        return
    except OSError as err:
        if err.errno not in _EXCHANGE_UNSUPPORTED:
            raise
    if os.path.lexists(dest):  # plain rename would replace an empty folder or a file silently
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dest))
    os.rename(source, dest)


# ---------------------------------------------------------------- durability

def fsync_tree(folder: PathLike) -> None:
    """fsync every regular file and folder under `folder` (symbolic links are not followed)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(root)


def _carry(source: Path, dest: Path) -> None:
    """Put `source` at `dest` without copying data where possible: hard links, folders rebuilt, links recreated."""
    mode = os.lstat(source).st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), dest)
    elif stat.S_ISDIR(mode):
        os.mkdir(dest)
        for entry in os.scandir(source):
            _carry(Path(entry.path), dest / entry.name)
        shutil.copystat(source, dest, follow_symlinks=False)
    else:
        try:
            os.link(source, dest, follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EACCES):
                raise
            shutil.copy2(source, dest, follow_symlinks=False)


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree; a link is removed itself, never what it points at."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def discard(staging: Optional[PathLike]) -> None:
    """Remove a staging folder that will not be published (a failed or interrupted build); None is ignored."""
    if staging is not None:
        _remove(Path(staging))


# ---------------------------------------------------------------- publish

def publish_folder(staging: PathLike, target: PathLike, *, keep: Iterable[str] = ()) -> Path:
    """Put the finished `staging` folder in place as `target`, whole; return `target`.

    Args:
        staging: a folder from `staging_for(target)` (beside `target`, same file system),
            holding everything the new folder should hold.
        target: the final name. A symbolic link is refused (`PublishError`): what it
            points at is not this function's to replace.
        keep: names of entries in the current `target` to carry into the new folder
            unchanged (the user's files beside an earlier run's output). Every other
            entry of the old `target` goes. A name both kept and in `staging` is
            refused before anything changes.

    The old folder is removed only after the new one is in place. On an error the
    staging folder is removed and `target` is as it was; a kill leaves `target` old or
    new, whole, and leftovers that the next `sweep_leftovers` clears.

    Raises:
        PublishError: `target` is a symbolic link or not a folder, a kept name clashes,
            or the OS refused a step (the message names the path and the cause).
    """
    staging, target = Path(staging), Path(target)
    try:
        if target.is_symlink():
            raise PublishError(errno.EEXIST, f"{target} is a symbolic link; give a real folder or a new name")
        exists = os.path.lexists(target)
        if exists and not target.is_dir():
            raise PublishError(errno.ENOTDIR, f"{target} is a file, not a folder; give a folder")
        before = set(os.listdir(target)) if exists else set()
        kept = sorted(set(keep) & before)
        clash = [name for name in kept if os.path.lexists(staging / name)]
        if clash:
            raise PublishError(errno.EEXIST, f"{target} holds {', '.join(clash)}, which this command did not write, "
                                             "and the new folder has a file of that name; choose a new folder, or "
                                             "move the file away and run again")
        for name in kept:
            _carry(target / name, staging / name)
        if exists:
            _copy_folder_access(target, staging)
        fsync_tree(staging)
        kill_point("staged")
        if not exists:
            _rename_new(staging, target)
            fsync_dir(target.parent)
            kill_point("renamed")
            return target
        if exchange(staging, target):
            fsync_dir(target.parent)
            old = staging
            kill_point("exchanged")
        else:
            old = _sibling(target, OLD_MARK)
            os.rename(target, old)
            fsync_dir(target.parent)
            kill_point("old-aside")
            os.rename(staging, target)
            fsync_dir(target.parent)
            kill_point("renamed")
    except PublishError:
        _remove(staging)
        raise
    except OSError as err:
        _remove(staging)
        raise PublishError(err.errno, _describe(target, err)) from err
    _rescue_late_entries(old, target, before)
    _remove(old)
    return target


def _copy_folder_access(target: Path, staging: Path) -> None:
    """Give the new folder the old one's permission bits and group: the swap publishes a new folder (a new
    inode), and a private folder (0700, 0750) must not come back readable by everyone."""
    info = os.stat(target)
    if info.st_gid != os.stat(staging).st_gid:
        try:
            os.chown(staging, -1, info.st_gid)
        except OSError as err:  # not a member of that group: the mode below still keeps others out
            log.warning("could not give %s the group of %s: %s", staging, target, err)
    os.chmod(staging, stat.S_IMODE(info.st_mode))


def _rescue_late_entries(old: Path, target: Path, before: set[str]) -> None:
    """Entries written into the old folder while the new one was being published: move them into it."""
    try:
        late = set(os.listdir(old)) - before
    except OSError:
        return
    for name in sorted(late):
        if not os.path.lexists(target / name):
            try:
                os.rename(old / name, target / name)
            except OSError as err:
                log.warning("could not move %s into %s: %s", old / name, target, err)


def _describe(target: Path, err: OSError) -> str:
    from medkor.run.atomic import human_size

    reason = err.strerror or str(err)
    text = f"cannot publish {target}: {reason}"
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        try:
            free = shutil.disk_usage(target.parent).free
            text += f" ({human_size(free)} free on the file system of {target.parent}); free space or choose a folder on a larger disk"
        except OSError:
            pass
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        text += f"; make {target.parent} writable or choose another folder"
    return text + f". {target} is unchanged."


def no_space_left(err: BaseException) -> bool:
    """True when `err`, or what it was raised from or during, is a full disk or quota: an OSError, or a
    library's error that only says so in its text (safetensors: "No space left on device (os error 28)")."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        text = str(current)
        if os.strerror(errno.ENOSPC) in text or f"os error {errno.ENOSPC})" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def no_space_message(target: PathLike, what: str, option: str = "--out") -> str:
    """The line for a full disk while `what` was being staged beside `target`: the path, the free space, what to do."""
    from medkor.run.atomic import human_size

    target = Path(target)
    try:
        free = f"{human_size(shutil.disk_usage(target.parent).free)} free"
    except OSError:
        free = "free space unknown"
    return (f"{option} {target}: no space left on the device while writing {what} beside it ({free} on the file "
            f"system of {target.parent}); free space or choose {option} on a larger disk. {target} is unchanged "
            "and the partial output was removed")


# ---------------------------------------------------------------- leftovers

def sweep_leftovers(folder: PathLike, name: Optional[str] = None) -> list[Path]:
    """Clear what killed writers left in `folder` (for the final name `name` only, if given).

    Only leftovers whose writer ran on this host and is no longer alive are touched:
    - `.<name>.partial-*` staging folders are removed;
    - `.<name>.old-*` copies are removed when `<name>` exists, and renamed back to
      `<name>` when it does not (a publish killed between its two renames); the
      newest is restored if there are several;
    - `.<name>.tmp-*` files of `medkor.run.atomic` are removed.
    Returns the paths removed or restored (as they were named before).
    """
    folder = Path(folder)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    swept: list[Path] = []
    olds = []
    for entry in entries:
        match = _LEFTOVER_RE.match(entry.name) or TEMP_RE.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"] or match.groupdict().get("bare") or 0)
        if writer_alive(match["host"], pid):
            continue
        kind = match.groupdict().get("kind") or "tmp"
        if kind == "old":
            olds.append((entry, match["name"]))
            continue
        if kind == "tmp" and entry.is_dir(follow_symlinks=False):
            continue  # atomic writes make files only
        _remove(Path(entry.path))
        swept.append(Path(entry.path))
    olds.sort(key=lambda item: _ctime(item[0]), reverse=True)
    for entry, final in olds:
        path, target = Path(entry.path), folder / final
        if not os.path.lexists(target) and entry.is_dir(follow_symlinks=False):
            try:
                os.rename(path, target)
                fsync_dir(folder)
                log.warning("restored %s from %s, left by a publish that was interrupted", target, path.name)
                swept.append(path)
                continue
            except OSError as err:
                log.warning("could not restore %s from %s: %s", target, path, err)
                continue
        _remove(path)
        swept.append(path)
    return swept


def _ctime(entry: os.DirEntry) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_ctime
    except OSError:
        return 0.0


# ---------------------------------------------------------------- markers

def marker_name(command: str) -> str:
    """`.medkor-<command>.json`: the list of files a medkor command wrote into a folder."""
    return f".medkor-{command}.json"


def write_marker(folder: PathLike, command: str, files: Iterable[str]) -> Path:
    """Record in `folder` (usually a staging folder) that `medkor <command>` wrote `files`."""
    path = Path(folder) / marker_name(command)
    payload = {"written_by": f"medkor {command}", "files": sorted(set(files))}
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def foreign_files(folder: PathLike, command: str, names: Iterable[str]) -> list[str]:
    """Entries of `folder` among `names` that `medkor <command>` did not write: no marker of that command lists them.

    Only the marker counts: a file that merely looks like the command's output (the same
    name, a folder written before markers existed) is the user's, never replaced.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned = marker_files(folder, command) or set()
    return sorted((set(os.listdir(folder)) & set(names)) - owned)


def foreign_files_message(folder: PathLike, command: str, foreign: list[str], option: str = "--out") -> str:
    """One line refusing to replace `foreign` files in `folder`: which, why, and what to do."""
    them = "it" if len(foreign) == 1 else "them"
    return (f"{option} {folder} holds {', '.join(foreign)}, which medkor {command} did not write (no "
            f"{marker_name(command)} there lists {them}; an output made before medkor kept that list counts as "
            f"not written by it) and would have to replace; choose a new folder, or remove {them} and run again")


def marker_files(folder: PathLike, command: str) -> Optional[set[str]]:
    """Names an earlier `medkor <command>` wrote into `folder` (its marker included); None without a readable marker."""
    path = Path(folder) / marker_name(command)
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) and f and "/" not in f for f in files):
        return None
    return set(files) | {path.name}
