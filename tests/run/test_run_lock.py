"""One writer per run folder: `medkor.run.run_lock` alone, then two real `medkor fit` resumes of one run.

The unit tests race real processes for one lock and plant locks of live, dead, reused
and foreign processes; the end-to-end test starts two `fit --ckpt_path last` of the same
run at the same moment and checks that exactly one trains.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import Callback

from medkor.checks import ConfigError
from medkor.run.run_lock import (
    ENV,
    LOCK_NAME,
    RunFolderBusy,
    RunLock,
    check_free,
    check_launch_lock,
    process_start,
    read_holder,
)
from tests.run.test_cli_runs import _env, _rows, _start, _steps

# ---------------------------------------------------------------- the lock alone


@pytest.fixture(autouse=True)
def _no_inherited_lock(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def _plant(folder: Path, pid: int, host: str | None = None, started: int | None = None, token: str = "0" * 16) -> Path:
    """A lock file as another process would have left it."""
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "since": "2026-01-02 03:04:05 UTC",
                                "command": "medkor fit --config c.yaml --ckpt_path last", "token": token,
                                "process_start": started}), encoding="utf-8")
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_acquire_writes_who_holds_it_and_release_removes_it(tmp_path):
    lock = RunLock(tmp_path, "medkor fit --config c.yaml")
    lock.acquire()
    holder = read_holder(tmp_path / LOCK_NAME)
    assert (holder.host, holder.pid, holder.command) == (socket.gethostname(), os.getpid(), "medkor fit --config c.yaml")
    assert holder.process_start == process_start(os.getpid()) is not None
    assert time.strptime(holder.since, "%Y-%m-%d %H:%M:%S UTC")
    assert os.environ[ENV] == f"{holder.token} {tmp_path / LOCK_NAME}"  # handed to the ranks this process launches
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]  # no temp file left
    lock.release()
    assert list(tmp_path.iterdir()) == [] and ENV not in os.environ


def test_a_running_holder_is_named_and_nothing_changes(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = _plant(tmp_path, sleeper.pid, started=process_start(sleeper.pid))
        before = path.read_bytes()
        with pytest.raises(RunFolderBusy) as caught:
            RunLock(tmp_path, "medkor fit").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)  # exit 2, one line, like every config error
    for part in (f"pid {sleeper.pid} on host {socket.gethostname()}", "since 2026-01-02 03:04:05 UTC",
                 "`medkor fit --config c.yaml --ckpt_path last`", f"kill {sleeper.pid}", "--ckpt_path last"):
        assert part in message, (part, message)
    assert "\n" not in message
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


@pytest.mark.parametrize("case", ["dead", "reused"])
def test_a_stale_lock_is_taken_over_with_a_line(tmp_path, case):
    # dead: its pid runs no more; reused: the pid runs, but a process started at another time (this one)
    pid, started = (_dead_pid(), None) if case == "dead" else (os.getpid(), process_start(os.getpid()) - 1)
    _plant(tmp_path, pid, started=started)
    said = []
    lock = RunLock(tmp_path, "medkor fit --ckpt_path last")
    lock.acquire(say=said.append)
    assert len(said) == 1 and f"taking over the lock of pid {pid}" in said[0] and "no longer runs" in said[0], said
    assert read_holder(tmp_path / LOCK_NAME).token == lock.holder.token
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_killed_holder_not_yet_reaped_is_stale(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _plant(tmp_path, child.pid, started=process_start(child.pid))
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)  # a zombie until waited for, as a SIGKILLed run whose launcher has not reaped it yet
        said = []
        RunLock(tmp_path, "medkor fit").acquire(say=said.append)
        assert len(said) == 1 and f"pid {child.pid}" in said[0], said
    finally:
        child.kill()
        child.wait()


def test_check_free_takes_nothing_and_lets_a_stale_lock_pass(tmp_path):
    check_free(tmp_path)  # no lock
    path = _plant(tmp_path, _dead_pid())
    before = path.read_bytes()
    check_free(tmp_path)  # stale: the run that takes it over says so
    _plant(tmp_path, os.getpid(), started=process_start(os.getpid()))
    with pytest.raises(RunFolderBusy, match=f"in use by pid {os.getpid()} "):
        check_free(tmp_path)
    _plant(tmp_path, 1, host="gpu-node-07")
    with pytest.raises(RunFolderBusy, match="locked by pid 1 on host gpu-node-07"):
        check_free(tmp_path)
    assert before != path.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_check_free_passes_the_ranks_of_the_launch_that_holds_the_lock(tmp_path, monkeypatch):
    # a rank process started by rank zero runs the same command, quick check included, while rank zero holds the lock
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = _plant(tmp_path, sleeper.pid, started=process_start(sleeper.pid), token="a" * 16)
        with pytest.raises(RunFolderBusy):
            check_free(tmp_path)  # another run
        monkeypatch.setenv(ENV, f"{'a' * 16} {path}")
        check_free(tmp_path)  # a rank of the holder's launch
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_of_another_host_is_never_taken(tmp_path):
    path = _plant(tmp_path, _dead_pid(), host="gpu-node-07")  # dead here means nothing: it is another machine's pid
    before = path.read_bytes()
    with pytest.raises(RunFolderBusy) as caught:
        RunLock(tmp_path, "medkor fit").acquire(say=pytest.fail)
    message = str(caught.value)
    assert "on host gpu-node-07" in message and f"remove {path}" in message, message
    assert path.read_bytes() == before


def test_a_file_that_is_no_lock_is_not_overwritten(tmp_path):
    (tmp_path / LOCK_NAME).write_text("mine\n", encoding="utf-8")
    with pytest.raises(RunFolderBusy, match=f"not a run lock medkor wrote.*remove {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path, "medkor fit").acquire()
    assert (tmp_path / LOCK_NAME).read_text(encoding="utf-8") == "mine\n"


def test_release_leaves_a_lock_taken_over_by_another_run(tmp_path):
    lock = RunLock(tmp_path, "medkor fit")
    lock.acquire()
    _plant(tmp_path, 1, token="f" * 16)  # another run took it over (this one was thought dead)
    lock.release()
    assert read_holder(tmp_path / LOCK_NAME).token == "f" * 16


def test_ranks_of_the_launch_recognise_its_lock(tmp_path, monkeypatch):
    lock = RunLock(tmp_path, "medkor fit")
    lock.acquire()
    inherited = os.environ[ENV]
    check_launch_lock()  # a rank started by this process: its lock, nothing raised
    lock.release()
    monkeypatch.setenv(ENV, inherited)  # a rank that outlived its launch's lock
    with pytest.raises(RunFolderBusy, match="it is gone"):
        check_launch_lock()
    _plant(tmp_path, 1, token="f" * 16)
    with pytest.raises(RunFolderBusy, match="held by pid 1"):
        check_launch_lock()
    monkeypatch.delenv(ENV)
    check_launch_lock()  # ranks started by torchrun or srun themselves carry no token: nothing to check


def _acquire_after_barrier(folder: str, barrier, out) -> None:
    barrier.wait()
    try:
        RunLock(Path(folder), "medkor fit").acquire(say=lambda line: out.put(("said", line)))
        out.put(("held", os.getpid()))
        time.sleep(1.0)  # hold it while the others try
    except RunFolderBusy as err:
        out.put(("refused", str(err)))


def test_eight_processes_started_together_one_holds_the_lock(tmp_path):
    _plant(tmp_path, _dead_pid())  # a stale lock too: taking it over must not let two in
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    workers = [ctx.Process(target=_acquire_after_barrier, args=(str(tmp_path), barrier, out)) for _ in range(8)]
    for worker in workers:
        worker.start()
    got = [out.get(timeout=60) for _ in range(9)]  # 8 answers and the one takeover line
    for worker in workers:
        worker.join(timeout=60)
    kinds = [kind for kind, _ in got]
    assert kinds.count("held") == 1 and kinds.count("refused") == 7 and kinds.count("said") == 1, got
    holder = next(value for kind, value in got if kind == "held")
    assert all(f"in use by pid {holder} " in value for kind, value in got if kind == "refused"), got


# ---------------------------------------------------------------- two resumes of one run through `medkor fit`


@pytest.mark.parametrize("ckpt", ["last", "path"])
def test_a_resume_into_a_held_run_is_refused_before_lightning_loads(repo_root, demo_data_dir, tmp_path, ckpt):
    from tests.run.test_cli_runs import _config

    config = _config(repo_root, tmp_path, demo_data_dir)
    run = tmp_path / "logs" / "demo" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not loaded: the refusal comes first")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _plant(run, sleeper.pid, started=process_start(sleeper.pid))
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        args = ["fit", "--config", str(config), "--ckpt_path",
                "last" if ckpt == "last" else str(run / "checkpoints" / "last.ckpt")]
        code = ("import sys\nfrom medkor.cli import main\ntry:\n    main(%r)\nexcept SystemExit as e:\n"
                "    print('EXIT', e.code)\nprint('HEAVY', sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
                % (args,))
        result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, env=_env(repo_root), capture_output=True,
                                text=True, timeout=120)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "EXIT 2" in result.stdout and "HEAVY []" in result.stdout, (result.stdout, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medkor fit: error: run folder {run} is in use by pid "
                                                   f"{sleeper.pid} on host {socket.gethostname()}, since "), lines
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before and lock.is_file()


class HoldAtTrainStart(Callback):
    """Keeps a run at its first training step until `<marker>` exists: the run holds its folder meanwhile."""

    def __init__(self, marker: str, timeout: float = 150.0) -> None:
        self.marker, self.timeout = Path(marker), timeout

    def on_train_start(self, trainer, pl_module) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _run_config(repo_root: Path, tmp: Path, data_dir: Path, name: str, epochs: int, extra: list) -> Path:
    from tests.run.test_cli_runs import _config

    path = _config(repo_root, tmp, data_dir, name=name, extra=tuple(extra))
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["trainer"].update(max_epochs=epochs, limit_train_batches=3)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.slow
def test_two_resumes_started_together_one_trains_the_other_is_refused(repo_root, demo_data_dir, tmp_path):
    first = _run_config(repo_root, tmp_path, demo_data_dir, "first.yaml", epochs=1, extra=[])
    done = subprocess.run([sys.executable, "-m", "medkor", "fit", "--config", str(first)], cwd=repo_root,
                          env=_env(repo_root), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "logs" / "demo" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / LOCK_NAME).exists()

    marker = tmp_path / "go"
    hold = {"class_path": "tests.run.test_run_lock.HoldAtTrainStart", "init_args": {"marker": str(marker)}}
    resume = _run_config(repo_root, tmp_path, demo_data_dir, "resume.yaml", epochs=2, extra=[hold])
    args = ["fit", "--config", str(resume), "--ckpt_path", "last"]
    procs = [_start(repo_root, args, tmp_path / f"resume-{k}.log") for k in range(2)]
    deadline = time.monotonic() + 200
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)  # the refused one ends while the other waits at its first step, holding the folder
    marker.touch()
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"resume-{k}.log").read_text(encoding="utf-8") for k in range(2)]
    assert sorted(codes) == [0, 2], (codes, [log[-3000:] for log in logs])
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    errors = [line for line in logs[loser].splitlines() if line.startswith("medkor fit: ")]
    assert len(errors) == 1 and "Traceback" not in logs[loser], logs[loser][-3000:]
    expected = (f"medkor fit: error: run folder {run} is in use by pid {procs[winner].pid} on host "
                f"{socket.gethostname()}, since ")
    assert errors[0].startswith(expected), errors[0]
    assert f"`medkor fit --config {resume} --ckpt_path last`" in errors[0] and "--ckpt_path last" in errors[0]

    rows = _rows(run)
    assert _steps(rows, "train/loss") == list(range(6)), rows  # each step once: 0-2 first, 3-5 resumed
    assert _steps(rows, "val/loss") == [2, 5] and _steps(rows, "kormedmcqa/acc") == [0, 3, 6], rows
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch00-step3.ckpt", "epoch01-step6.ckpt", "last.ckpt"], names  # no -v1 twins
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the first attempt's and the resume's
    assert not (run / LOCK_NAME).exists()  # released when the run ended
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
