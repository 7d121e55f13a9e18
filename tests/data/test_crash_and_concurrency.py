"""A build killed with SIGKILL leaves nothing usable; concurrent builders never both write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from medkor.data.cache import CacheRequest, check_manifest, resolve
from medkor.data.sources import Selection
from medkor.data.inventory import verify_cache
from tests.data.conftest import korean_docs, write_jsonl

WORKER = Path(__file__).with_name("build_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _start(data_dir: Path, tokenizer_dir: Path, num_proc: int = 1, stderr=subprocess.PIPE) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(data_dir), str(tokenizer_dir), "64", str(num_proc)],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )


def _published(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if cache_dir.is_dir() else []


def _wait_for_build_folder(cache_dir: Path, proc: subprocess.Popen, limit: float = 60) -> bool:
    end = time.time() + limit
    while time.time() < end and proc.poll() is None:
        if cache_dir.is_dir() and any(".partial-" in p.name for p in cache_dir.iterdir()):
            return True
        time.sleep(0.01)
    return False


def test_sigkill_at_random_moments_leaves_no_cache(tmp_path, tokenizer_dir):
    data_dir = tmp_path / "data"
    write_jsonl(data_dir / "train.jsonl", korean_docs(6000))
    cache_dir = data_dir / ".cache"
    rng = random.Random()
    seen_build = 0
    for attempt in range(3):
        proc = _start(data_dir, tokenizer_dir, num_proc=2 if attempt % 2 else 1)
        if _wait_for_build_folder(cache_dir, proc):
            seen_build += 1
            time.sleep(rng.uniform(0.0, 0.8))  # somewhere inside read / tokenize / pack / publish
        proc.kill()  # SIGKILL; a no-op when the build already finished (then its cache must be whole)
        proc.wait()
        for folder in _published(cache_dir):  # killed after the rename: then it must be whole
            assert check_manifest(folder) is None and verify_cache(folder) == []
    assert seen_build >= 1
    proc = _start(data_dir, tokenizer_dir)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["status"] in ("built", "hit")
    assert [p.name for p in _published(cache_dir)] == [Path(result["path"]).name]
    assert verify_cache(Path(result["path"])) == []
    assert result["tokens"] > 6000 * 10
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".tmp-") or ".partial-" in p.name], \
        "stale build folders were not swept"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited, only not yet been reaped


def _wait_for_workers(proc: subprocess.Popen, count: int) -> list[int]:
    workers: list[int] = []
    end = time.time() + 60
    while len(workers) < count and proc.poll() is None and time.time() < end:
        workers = _children(proc.pid)
        time.sleep(0.01)
    assert len(workers) == count, "the build finished or failed before its workers were seen"
    return workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; workers die with their parent on Linux")
def test_sigkilled_build_leaves_no_worker_processes(tmp_path, tokenizer_dir):
    data_dir = tmp_path / "data"
    write_jsonl(data_dir / "train.jsonl", korean_docs(30000))  # several chunks: two workers
    proc = _start(data_dir, tokenizer_dir, num_proc=2)
    workers = _wait_for_workers(proc, 2)
    proc.kill()
    proc.wait()
    end = time.time() + 5
    while any(map(_alive, workers)) and time.time() < end:
        time.sleep(0.05)
    assert not any(map(_alive, workers)), "tokenizer workers outlived the killed build"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_prepare_cleanly(tmp_path, tokenizer_dir):
    data_dir = tmp_path / "data"
    write_jsonl(data_dir / "train.jsonl", korean_docs(30000))
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model": {"model_name_or_path": str(ROOT / "medkor/assets/demo/tiny-gemma3"), "tokenizer_path": str(tokenizer_dir)},
        "data": {"data_dir": str(data_dir), "max_length": 64, "num_proc": 2},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "medkor", "prepare", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    workers = _wait_for_workers(proc, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "medkor prepare: interrupted" in err and "Traceback" not in err
    assert not any(map(_alive, workers))
    assert _published(data_dir / ".cache") == []
    assert not [p for p in (data_dir / ".cache").iterdir() if p.name.startswith(".tmp-") or ".partial-" in p.name]


def test_two_builders_started_together_build_once(tmp_path, tokenizer_dir):
    data_dir = tmp_path / "data"
    write_jsonl(data_dir / "train.jsonl", korean_docs(1500))
    request = CacheRequest("train", Selection(files=[data_dir / "train.jsonl"]), data_dir, data_dir / ".cache",
                           str(tokenizer_dir), max_length=64)
    final = resolve(request).folder
    # hold the key's lock until both processes are queued on it, so they really race
    lock = FileLock(str(final.parent / f"{final.name}.lock"))
    lock.acquire()
    logs = [tmp_path / f"err{i}.txt" for i in range(2)]
    procs = [_start(data_dir, tokenizer_dir, stderr=open(log, "w")) for log in logs]
    end = time.time() + 90
    while not all("waiting for" in log.read_text() for log in logs):
        assert time.time() < end and all(p.poll() is None for p in procs), [log.read_text() for log in logs]
        time.sleep(0.05)
    lock.release()
    results = []
    for proc, log in zip(procs, logs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.read_text()
        results.append(json.loads(out))
    assert sorted(r["status"] for r in results) == ["built", "hit"]
    assert results[0]["key"] == results[1]["key"] and results[0]["tokens"] == results[1]["tokens"]
    published = _published(data_dir / ".cache")
    assert len(published) == 1 and verify_cache(published[0]) == []
