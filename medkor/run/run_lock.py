"""One writer per run folder: `version_N/run.lock` names the process that writes into it.

Global rank zero of a `medkor fit|validate|test` takes the lock when it settles its run
folder (before any file of the folder changes) and removes it when the run ends. The
other ranks of the same launch write only what rank zero lets them (sharded checkpoint
files), so they hold nothing themselves: rank zero puts the lock's token in the
environment (`MEDKOR_RUN_LOCK`), which Lightning's launcher hands to every rank process
it starts, and such a rank checks that the lock it works under is still its launch's.

The lock file is written whole beside the folder's files and linked into place
(`os.link` fails when the name exists, on local disks and NFS alike), so a reader never
sees half a lock. A lock whose process is gone from this host (pid not running, or
running but started at another time: a reused pid) is stale and taken over, saying so.
A lock of another host is never taken: medkor cannot see whether that process runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from medkor.checks import ConfigError

LOCK_NAME = "run.lock"
ENV = "MEDKOR_RUN_LOCK"  # "<token> <lock path>": set by rank zero, inherited by the ranks it launches


class RunFolderBusy(ConfigError):
    """Another process writes into the run folder (or may: a lock of another host)."""


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the process that took it."""

    host: str
    pid: int
    since: str  # UTC, as a person reads it
    command: str
    token: str
    process_start: Optional[int] = None  # the kernel's start time of `pid` (clock ticks since boot), Linux only

    def described(self) -> str:
        return f"pid {self.pid} on host {self.host}, since {self.since}: `{self.command}`"


def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...); None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses


def process_start(pid: int) -> Optional[int]:
    """The start time of process `pid` in clock ticks since boot (None where /proc cannot tell)."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of stat
    except (IndexError, ValueError):
        return None


def holder_running(holder: Holder) -> Optional[bool]:
    """Whether the lock's process still runs; None when it is another host's (cannot be seen from here)."""
    if holder.host != socket.gethostname():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _proc_stat(holder.pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent: it writes nothing more
    started = process_start(holder.pid)
    if holder.process_start is not None and started is not None and started != holder.process_start:
        return False  # the pid now belongs to a process started later
    return True


def read_holder(path: Path) -> Optional[Holder]:
    """The lock at `path`; None when there is none. Raises `RunFolderBusy` for a file that is no lock medkor wrote."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise RunFolderBusy(f"{path}: unreadable run lock ({err}); if no run uses {path.parent}, remove {path} "
                            "and start again") from err
    try:
        data = json.loads(text)
        return Holder(host=str(data["host"]), pid=int(data["pid"]), since=str(data["since"]),
                      command=str(data["command"]), token=str(data["token"]),
                      process_start=None if data.get("process_start") is None else int(data["process_start"]))
    except (ValueError, KeyError, TypeError) as err:
        raise RunFolderBusy(f"{path}: not a run lock medkor wrote ({type(err).__name__}: {err}); if no run uses "
                            f"{path.parent}, remove {path} and start again") from err


@contextlib.contextmanager
def _folder_guard(folder: Path) -> Iterator[None]:
    """An exclusive `flock` on the folder while a lock is taken over (best effort: some file systems refuse it)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # the lock file's own link/replace still decides who holds it
        yield
    finally:
        os.close(fd)  # releases the flock


class RunLock:
    """The lock of one run folder, held by this process from `acquire` to `release`."""

    def __init__(self, folder: Path, command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.holder: Optional[Holder] = None

    def acquire(self, say: Callable[[str], None] = print) -> None:
        """Take the lock; `say` gets the line about a stale lock taken over. Raises `RunFolderBusy`."""
        me = Holder(host=socket.gethostname(), pid=os.getpid(),
                    since=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), command=self.command,
                    token=secrets.token_hex(8), process_start=process_start(os.getpid()))
        temp = self.folder / f".{LOCK_NAME}.tmp-{me.pid}-{me.token}"
        with temp.open("w", encoding="utf-8") as f:
            json.dump(asdict(me), f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            with _folder_guard(self.folder):
                self._take(temp, me, say)
        finally:
            temp.unlink(missing_ok=True)
        self.holder = me
        os.environ[ENV] = f"{me.token} {self.path}"

    def _take(self, temp: Path, me: Holder, say: Callable[[str], None]) -> None:
        for _ in range(5):  # a lock that disappears between the link and the read: try again
            try:
                os.link(temp, self.path)
                return
            except FileExistsError:
                pass
            other = read_holder(self.path)
            if other is None:
                continue
            running = holder_running(other)
            if other.pid == me.pid and other.host == me.host and running:
                os.replace(temp, self.path)  # this very process took it earlier and never released it
                return
            if running is not False:
                raise _refusal(self.path, other, running)
            os.replace(temp, self.path)
            say(f"run folder {self.folder}: taking over the lock of {other.described()}, which no longer runs")
            return
        raise RunFolderBusy(f"run folder {self.folder}: its lock {self.path} keeps changing; another run is "
                            "starting in it. Try again in a moment")

    def release(self) -> None:
        """Remove the lock if it is still this process's (a lock taken over by another run is left alone)."""
        if self.holder is None:
            return
        try:
            current = read_holder(self.path)
        except RunFolderBusy:
            current = None
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        if os.environ.get(ENV, "").split(" ", 1)[0] == self.holder.token:
            del os.environ[ENV]
        self.holder = None


def _refusal(path: Path, other: Holder, running: Optional[bool]) -> RunFolderBusy:
    if running is None:
        return RunFolderBusy(
            f"run folder {path.parent} is locked by {other.described()}; medkor cannot see from "
            f"{socket.gethostname()} whether that run goes on. If it has ended, remove {path} and start again"
        )
    return RunFolderBusy(
        f"run folder {path.parent} is in use by {other.described()}; wait for that run to end "
        f"(or stop it: kill {other.pid}), then resume with --ckpt_path last. Nothing was written"
    )


def check_free(folder: Path) -> None:
    """Raise the `RunFolderBusy` that taking the folder's lock now would raise; take nothing.

    For a check before anything loads: a stale lock passes (taking it over says so later), and
    so does the lock of this launch (a rank process started by the rank zero that holds it).
    """
    path = Path(folder) / LOCK_NAME
    other = read_holder(path)
    if other is not None and os.environ.get(ENV, "").split(" ", 1)[0] == other.token:
        return
    running = holder_running(other) if other is not None else False
    if other is not None and running is not False:
        raise _refusal(path, other, running)


def check_launch_lock() -> None:
    """On a rank other than zero: the lock named in `MEDKOR_RUN_LOCK` must still be this launch's.

    Nothing to check when the variable is not set (the rank was not launched by a medkor
    rank zero that holds a lock, e.g. every rank started by torchrun or srun itself).
    """
    value = os.environ.get(ENV)
    if not value or " " not in value:
        return
    token, path = value.split(" ", 1)
    holder = read_holder(Path(path))
    if holder is None or holder.token != token:
        now = f"it is now held by {holder.described()}" if holder is not None else "it is gone"
        raise RunFolderBusy(f"this rank was launched under the lock {path}, but {now}; "
                            "the run that launched it no longer owns the folder")
