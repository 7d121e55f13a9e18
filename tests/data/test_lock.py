"""BuildLock: exclusive across processes even where flock is node-local, dead holders taken over, waits bounded."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medkor.data import lock as lock_module
from medkor.data.lock import BuildLock, LockTimeout, read_holder

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from medkor.data.lock import BuildLock
lock = BuildLock(sys.argv[1], what="train-abc", heartbeat=0.1)
lock.acquire(timeout=10)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def _hold_in_child(path: Path, seconds: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def _foreign_owner(lock: BuildLock, age: float = 0.0, machine: str = "other-boot:pid:[1]", pid: int = 4242) -> None:
    """An owner file as a process on another node writes it, its heartbeat `age` seconds old."""
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.owner.write_text(json.dumps({"host": "node7", "pid": pid, "started": time.time() - age, "token": "feed",
                                      "what": "train-abc", "machine": machine}))
    os.utime(lock.owner, (time.time() - age, time.time() - age))


@pytest.fixture
def node_local_flock(monkeypatch):
    """flock as on Lustre `localflock` seen from two nodes: every process gets it."""
    monkeypatch.setattr(lock_module.fcntl, "flock", lambda fd, op: None)


def test_second_process_waits_then_times_out_naming_the_holder(tmp_path):
    path = tmp_path / "train-abc.lock"
    child = _hold_in_child(path, 5)
    try:
        other = BuildLock(path)
        assert not other.try_acquire()
        start = time.monotonic()
        with pytest.raises(LockTimeout) as raised:
            other.acquire(timeout=0.5)
        assert 0.4 < time.monotonic() - start < 3
        message = str(raised.value)
        assert f"host {socket.gethostname()} pid {child.pid} since " in message
        assert str(path) + ".owner" in message and "data.lock_timeout" in message
        holder = read_holder(other.owner)
        assert (holder.pid, holder.what) == (child.pid, "train-abc") and other.live_holder().pid == child.pid
    finally:
        child.kill()
        child.wait()


def test_a_waiter_gets_the_lock_when_the_holder_releases(tmp_path):
    path = tmp_path / "train-abc.lock"
    child = _hold_in_child(path, 0.5)
    lock = BuildLock(path)
    lock.acquire(timeout=10)
    assert child.wait(timeout=10) == 0
    assert read_holder(lock.owner).pid == os.getpid()
    lock.release()
    assert not lock.owner.exists() and read_holder(lock.owner) is None


def test_sigkilled_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    path = tmp_path / "train-abc.lock"
    child = _hold_in_child(path, 60)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert read_holder(path.with_name(path.name + ".owner")).pid == child.pid  # its owner file stays behind
    lock = BuildLock(path, stale_after=3600)  # no heartbeat wait: the pid is known dead on this machine
    assert lock.holder() is not None and lock.live_holder() is None
    assert lock.try_acquire()
    assert read_holder(lock.owner).pid == os.getpid()
    lock.release()


def test_exclusive_where_flock_is_node_local(tmp_path, node_local_flock):
    first, second = BuildLock(tmp_path / "k.lock"), BuildLock(tmp_path / "k.lock")
    first.acquire(timeout=0)
    assert not second.try_acquire()  # the owner file decides, not flock
    first.release()
    assert second.try_acquire()
    second.release()


def test_works_on_a_file_system_without_flock(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_flock)
    first, second = BuildLock(tmp_path / "k.lock"), BuildLock(tmp_path / "k.lock")
    assert first.try_acquire() and not second.try_acquire()
    first.release()


def test_holder_on_another_node_blocks_while_its_heartbeat_is_fresh(tmp_path, node_local_flock):
    lock = BuildLock(tmp_path / "k.lock", stale_after=60)
    _foreign_owner(lock, age=1)
    with pytest.raises(LockTimeout, match=r"host node7 pid 4242 since .* \(heartbeat 1 s ago\)"):
        lock.acquire(timeout=0.3)
    _foreign_owner(lock, age=61)  # its heartbeat stopped a minute ago: the node died
    assert lock.try_acquire()
    assert read_holder(lock.owner).host == socket.gethostname()
    lock.release()


def test_a_heartbeat_that_stops_moving_is_stale_whatever_the_clocks_say(tmp_path, node_local_flock):
    lock = BuildLock(tmp_path / "k.lock", stale_after=0.6)
    _foreign_owner(lock, age=-3600)  # the dead node's clock ran an hour ahead: its mtime looks fresh for an hour
    start = time.monotonic()
    lock.acquire(timeout=10)
    assert 0.5 < time.monotonic() - start < 5
    lock.release()


def test_heartbeat_keeps_a_long_hold_alive(tmp_path, node_local_flock):
    holder = BuildLock(tmp_path / "k.lock", stale_after=0.8, heartbeat=0.1)
    holder.acquire(timeout=0)
    first = read_holder(holder.owner).mtime_ns
    waiter = BuildLock(tmp_path / "k.lock", stale_after=0.8)
    with pytest.raises(LockTimeout):
        waiter.acquire(timeout=2)  # 2 s > stale_after: only the heartbeat keeps the lock held
    assert read_holder(holder.owner).mtime_ns > first
    holder.release()


TAKER = """
import os, sys, time
from medkor.data import lock as m
m.fcntl.flock = lambda fd, op: None   # every process "holds" flock, as on two nodes with localflock
m._machine = lambda: "node-%d" % os.getpid()  # and each is its own machine: only heartbeats tell
lock = m.BuildLock(sys.argv[1], stale_after=0.5, heartbeat=0.05)
lock.acquire(timeout=30, poll=0.01)
with open(sys.argv[2], "a") as log:
    log.write("in %d\\n" % os.getpid()); log.flush()
    time.sleep(0.2)
    log.write("out %d\\n" % os.getpid()); log.flush()
lock.release()
"""


def test_racing_takeovers_of_a_dead_lock_leave_one_holder_at_a_time(tmp_path):
    lock = BuildLock(tmp_path / "k.lock")
    _foreign_owner(lock, age=3600)
    journal = tmp_path / "journal"
    takers = [subprocess.Popen([sys.executable, "-c", TAKER, str(lock.path), str(journal)], cwd=ROOT)
              for _ in range(4)]
    assert [t.wait(timeout=60) for t in takers] == [0, 0, 0, 0]
    events = journal.read_text().split("\n")[:-1]
    assert len(events) == 8
    for enter, leave in zip(events[::2], events[1::2]):  # strictly nested: in A, out A, in B, out B, ...
        assert enter.startswith("in ") and leave == "out " + enter[3:]
    assert not lock.owner.exists()


def test_a_killed_holder_not_yet_reaped_counts_as_gone(tmp_path):
    path = tmp_path / "train-abc.lock"
    child = _hold_in_child(path, 60)
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    # dead, its parent (us) not waiting; the leader turns Z before its heartbeat thread has
    # exited and closed the files (and the flock) they share, so wait for that thread too
    while not (lock_module._zombie(child.pid) and len(os.listdir(f"/proc/{child.pid}/task")) <= 1) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        lock = BuildLock(path, stale_after=3600)
        assert lock.live_holder() is None and lock.try_acquire()
        lock.release()
    finally:
        child.wait()
