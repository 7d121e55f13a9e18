"""A build lock that holds across the nodes of a shared file system; every wait is bounded.

`flock` alone is not enough for caches on a cluster: Lustre mounted with `localflock`
and some NFS setups honour it only among the processes of one node, so two nodes would
both "hold" it, while a dead client's lock on other setups is never released. A lock
here is two files next to what it guards:

- `<name>.lock` is `flock`ed (where the file system supports it): processes of one
  node queue on it cheaply, and the kernel releases it when its holder dies.
- `<name>.lock.owner` exists exactly while a process on any node holds the lock. It is
  made whole, holding `{host, pid, started, token, what}`, and then hard-linked into
  place: `link(2)` fails when the name exists, atomically on NFS and Lustre, so one
  process wins. The holder refreshes the file's mtime every `heartbeat` seconds from a
  thread.

A waiter takes over an owner file whose holder is gone: at once when the holder ran
on this machine (same boot and pid namespace) and its pid no longer runs, otherwise
when the heartbeat has not moved for `stale_after` seconds (measured by the waiter's
own clock as well as by the file's mtime, so skewed node clocks cannot keep a dead
lock alive). Take-overs are serialised by a third file (`.takeover`), so two waiters
never both replace the same dead owner. A wait longer than `timeout` raises
`LockTimeout` saying who holds the lock, since when, and which file to look at.

Plain Python (no Lightning, no torch).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

log = logging.getLogger("medkor.data")

DEFAULT_TIMEOUT = 7200.0  # seconds a process waits for another's build before giving up (data.lock_timeout)
STALE_AFTER = 120.0  # a heartbeat this old means the holder is gone (NFS attribute caches hold up to 60 s)
TELL_EVERY = 60.0  # seconds between "still waiting" lines
_TAKEOVER_STALE = 60.0  # a take-over guard older than this belongs to a process that died inside it
# flock errors of file systems that do not offer it (Lustre `noflock`, some NFS): the owner file still decides
_NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EINVAL, getattr(errno, "EOPNOTSUPP", errno.EINVAL),
             getattr(errno, "ENOTSUP", errno.EINVAL)}


class LockTimeout(TimeoutError):
    """A lock stayed held longer than the wait allowed; the message names the holder and the file."""


def _machine() -> str:
    """This machine's boot and pid namespace: pids compare only between processes that share both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _process_start(pid: int) -> Optional[int]:
    """Start time of `pid` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _zombie(pid: int) -> bool:
    """A process that has exited but was not reaped yet (its parent has not waited for it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _running(pid: int, started: Optional[int]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if _zombie(pid):
        return False
    if started is not None:
        now = _process_start(pid)
        return now is None or now == started
    return True


@dataclass(frozen=True)
class LockHolder:
    """What an owner file says about the process holding the lock, and how fresh its heartbeat is."""

    host: str
    pid: int
    started: float  # wall-clock time the lock was taken
    token: str
    what: str = ""
    machine: str = ""
    process_start: Optional[int] = None
    mtime_ns: int = 0  # the heartbeat: the owner file's last modification

    def heartbeat_age(self) -> float:
        return max(0.0, time.time() - self.mtime_ns / 1e9)

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"host {self.host} pid {self.pid} since {since} (heartbeat {self.heartbeat_age():.0f} s ago)"


def read_holder(owner: Path) -> Optional[LockHolder]:
    """The holder recorded in an owner file; None when nobody holds the lock."""
    try:
        fd = os.open(owner, os.O_RDONLY)  # open, not stat: NFS revalidates attributes on open
    except FileNotFoundError:
        return None
    try:
        mtime_ns = os.fstat(fd).st_mtime_ns
        raw = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        info: dict[str, Any] = json.loads(raw.decode("utf-8"))
        return LockHolder(
            host=str(info["host"]), pid=int(info["pid"]), started=float(info["started"]), token=str(info["token"]),
            what=str(info.get("what", "")), machine=str(info.get("machine", "")),
            process_start=info.get("process_start"), mtime_ns=mtime_ns,
        )
    except (ValueError, KeyError, TypeError):
        # not written by this module (or damaged): nobody can vouch for it but its mtime
        return LockHolder(host="?", pid=-1, started=mtime_ns / 1e9, token=f"unreadable:{mtime_ns}", mtime_ns=mtime_ns)


class BuildLock:
    """An exclusive lock on `path` (`<name>.lock`) for processes on any node of a shared file system.

    Args:
        path: The lock file; the owner file is `<path>.owner`.
        what: What the lock guards, recorded in the owner file (e.g. the cache folder name).
        stale_after: Seconds without a heartbeat after which a holder on another node is taken for dead.
        heartbeat: Seconds between heartbeats (default: an eighth of `stale_after`).
    """

    def __init__(self, path: Union[str, Path], what: str = "", stale_after: float = STALE_AFTER,
                 heartbeat: Optional[float] = None, quiet: bool = False) -> None:
        self.path = Path(path)
        self.quiet = quiet  # a take-over is routine here (a dead build's claim): logged at debug level
        self.owner = self.path.with_name(self.path.name + ".owner")
        self.what = what or self.path.stem
        self.stale_after = float(stale_after)
        self.heartbeat = float(heartbeat) if heartbeat is not None else self.stale_after / 8
        self.token: Optional[str] = None
        self._flock_fd: Optional[int] = None
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None
        self._seen: dict[str, tuple[int, float]] = {}  # token -> (mtime_ns, when this process first saw it)

    # ------------------------------------------------------------------ public
    @property
    def held(self) -> bool:
        return self.token is not None

    def holder(self) -> Optional[LockHolder]:
        return read_holder(self.owner)

    def live_holder(self) -> Optional[LockHolder]:
        """The holder while it is alive as far as this process can tell (a dead one's file may linger), else None.

        Call it on the same object over time: a heartbeat that stopped moving is noticed by this object's clock.
        """
        holder = self.holder()
        return holder if holder is not None and not self._stale(holder) else None

    def acquire(self, timeout: Optional[float] = DEFAULT_TIMEOUT, poll: float = 0.1) -> None:
        """Take the lock, waiting at most `timeout` seconds (None: as long as it takes; 0: not at all)."""
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this lock object")
        start = time.monotonic()
        deadline = None if timeout is None else start + max(0.0, timeout)
        told = -1.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_node(deadline, poll, start)
            while not self._claim():
                holder = self.holder()
                if holder is not None and self._stale(holder):
                    self._take_over(holder)
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise LockTimeout(self._timeout_message(holder, now - start, timeout))
                if holder is not None and (told < 0 or now - told >= TELL_EVERY):
                    told = now
                    self._tell(holder, now - start, timeout)
                time.sleep(min(poll * 5, 1.0) if now - start > 5 else poll)
        except BaseException:
            self._unlock_node()
            raise
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-heartbeat {self.owner.name}", daemon=True)
        self._beat.start()

    def try_acquire(self) -> bool:
        """Take the lock if nobody (alive) holds it; never waits."""
        try:
            self.acquire(timeout=0)
        except LockTimeout:
            return False
        return True

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        holder = self.holder()
        if holder is not None and holder.token == self.token:
            try:
                os.unlink(self.owner)
            except FileNotFoundError:
                pass
        self.token = None
        self._unlock_node()

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ node-local layer
    def _lock_node(self, deadline: Optional[float], poll: float, start: float) -> None:
        """flock `path`: processes of this node queue here; a file system without flock skips it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = -1.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._flock_fd = fd
                return
            except BlockingIOError:
                pass
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_FLOCK:
                    return  # the owner file alone serialises
                raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                os.close(fd)
                raise LockTimeout(self._timeout_message(self.holder(), now - start, deadline - start))
            holder = self.holder()
            if holder is not None and (told < 0 or now - told >= TELL_EVERY):
                told = now
                self._tell(holder, now - start, None if deadline is None else deadline - start)
            time.sleep(poll)

    def _unlock_node(self) -> None:
        if self._flock_fd is not None:
            try:
                fcntl.flock(self._flock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._flock_fd)
                self._flock_fd = None

    # ------------------------------------------------------------------ cross-node layer
    def _claim(self) -> bool:
        """Create the owner file whole, by hard link: True when this process now holds the lock."""
        token = secrets.token_hex(8)
        info = {
            "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "token": token,
            "what": self.what, "machine": _machine(), "process_start": _process_start(os.getpid()),
        }
        staged = self.owner.with_name(f"{self.owner.name}.{socket.gethostname()}.{os.getpid()}.{token}")
        with open(staged, "w", encoding="utf-8") as handle:
            json.dump(info, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(staged, self.owner)
            won = True
        except FileExistsError:
            won = False
        except OSError:
            # NFS may lose the reply of a link that happened: the staged file's link count tells
            won = os.stat(staged).st_nlink == 2
        finally:
            os.unlink(staged)
        if won:
            self.token = token
        return won

    def _stale(self, holder: LockHolder) -> bool:
        if holder.machine and holder.machine == _machine():
            return not _running(holder.pid, holder.process_start)
        if holder.heartbeat_age() > self.stale_after:
            return True
        # the waiter's own clock: a heartbeat that stopped moving, whatever the holder's clock says
        now = time.monotonic()
        mtime, since = self._seen.get(holder.token, (holder.mtime_ns, now))
        if mtime != holder.mtime_ns:
            mtime, since = holder.mtime_ns, now
        self._seen[holder.token] = (mtime, since)
        return now - since > self.stale_after

    def _take_over(self, stale: LockHolder) -> None:
        """Remove a dead holder's owner file, under a guard so that only one waiter does it."""
        guard = self.owner.with_name(self.owner.name + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE:
                    guard.unlink()
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        try:
            current = self.holder()
            if current is not None and current.token == stale.token:
                os.unlink(self.owner)
                (log.debug if self.quiet else log.warning)("took over %s from %s: its holder is gone", self.owner,
                                                           stale.describe())
        finally:
            guard.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            holder = self.holder()
            if holder is None or holder.token != self.token:
                log.warning(
                    "%s was taken over by %s while this process held it (no heartbeat for %.0f s); this build "
                    "goes on and the atomic rename of its folder still decides", self.owner,
                    holder.describe() if holder else "nobody", self.stale_after,
                )
                return
            try:
                os.utime(self.owner)
            except OSError as err:
                log.warning("cannot refresh the heartbeat of %s (%s)", self.owner, err)

    # ------------------------------------------------------------------ messages
    def _tell(self, holder: LockHolder, waited: float, timeout: Optional[float]) -> None:
        bound = "no limit" if timeout is None else f"up to {timeout:.0f} s (data.lock_timeout)"
        log.info("waiting for %s (%s): held by %s; waited %.0f s, %s", self.what, self.owner, holder.describe(),
                 waited, bound)

    def _timeout_message(self, holder: Optional[LockHolder], waited: float, timeout: Optional[float]) -> str:
        who = holder.describe() if holder is not None else "a process of this node (flock)"
        return (
            f"gave up after {waited:.0f} s waiting for {self.what}: {self.owner} is held by {who}; "
            f"if that process is gone, remove {self.owner}, otherwise let it finish or raise data.lock_timeout "
            f"(now {timeout if timeout is not None else 'none'} s)"
        )
