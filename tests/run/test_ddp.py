"""`medkor fit` under DDP: two gloo processes on CPU, the real data module, model and CLI.

`medkor fit --trainer.strategy ddp --trainer.devices 2 --trainer.accelerator cpu` on a
small copy of configs/demo.yaml; Lightning's subprocess launcher starts rank 1 itself,
as on a GPU node. Callbacks from tests/run/ddp_worker.py record what every rank
trains on. Checked: the caches are built once (rank 1 only loads them), checkpoints,
the run folder and the metrics are written once (by rank 0), the ranks train on
disjoint halves of every epoch, and a run whose whole process group is SIGKILLed
after a step checkpoint resumes with `--ckpt_path last` to the same losses,
KorMedMCQA history, per-rank batches and bit-identical weights as the run that was
never interrupted.

With the demo's packed rows every batch has the same shape on both ranks, so the
ranks draw the same dropout masks and end every step with equal random states; a
resume that gave every rank rank 0's state would pass unnoticed. The unpacked runs
(one document per row: batches of unequal length, random states that differ by rank)
check that each rank gets its own state back (`test_every_rank_resumes_with_its_own_random_state`).

Runs overlap (each starts as soon as the run it resumes is done): most of a run's
wall time is rank 0 and then rank 1 importing, one core each.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from medkor.data.cache import TMP_PREFIX, TRASH_PREFIX
from medkor.data.collate import Collator
from medkor.data.cache import open_folder
from medkor.data.sampler import EpochShuffleSampler
from tests.run.ddp_worker import digest
from tests.run.resume_config import resume_config, write_config

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3
EPOCHS = 2
BATCH_SIZE = 8
KILL_STEP = 5  # last.ckpt is then step 4: one batch into the second epoch
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
CHECKPOINTS = {"last.ckpt", "step2.ckpt", "step4.ckpt", "step6.ckpt"}


def _config(repo_root: Path, tmp: Path, kill_step: int | None, record: Path, packing: bool = True) -> Path:
    extra = [{"class_path": "tests.run.ddp_worker.RecordRows", "init_args": {"out": str(record)}}]
    if kill_step is not None:
        extra.append({"class_path": "tests.run.ddp_worker.KillGroupAt", "init_args": {"step": kill_step}})
    config = resume_config(repo_root, tmp / "logs", EPOCHS, STEPS_PER_EPOCH, extra)
    config["data"].update(cache_dir=str(tmp / "cache"), num_workers=0, batch_size=BATCH_SIZE, packing=packing)
    return write_config(config, tmp / f"config-{record.name}.yaml")


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (held open together, so no two runs get the same one)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _Run:
    """`medkor fit ARGS` started as the leader of a new process group (the group is what a kill takes down)."""

    def __init__(self, repo_root: Path, logs: Path, port: int, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for name in ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR"):
            env.pop(name, None)  # Lightning's launcher must start the second process itself
        env["MASTER_PORT"] = str(port)  # runs started together must not race for one port
        env["OMP_NUM_THREADS"] = "1"  # one thread per rank: runs started together share two cores
        logs.mkdir(parents=True, exist_ok=True)
        self.out, self.err = logs / "stdout.txt", logs / "stderr.txt"
        self.started = time.perf_counter()
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "medkor", "fit", *args], cwd=repo_root, env=env,
                                         stdout=out, stderr=err, text=True, start_new_session=True)

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL whatever is left of the run's process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def finish(self) -> subprocess.CompletedProcess:
        """The finished run; records whether any process of its group outlived rank 0 by 30 s (then kills it)."""
        self.proc.wait()
        group_left = _group_alive(self.proc.pid, wait=30.0)  # rank 1 may still be exiting normally
        if group_left:
            self.kill()
        done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                           self.out.read_text(encoding="utf-8"), self.err.read_text(encoding="utf-8"))
        done.seconds = time.perf_counter() - self.started
        done.group_left = group_left
        return done


def _group_alive(pgid: int, wait: float = 0.0) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def _records(folder: Path) -> dict[int, dict]:
    """Per rank: the start line and {step: batch line} (a step recorded twice is an error)."""
    ranks = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        starts = [line for line in lines if line["kind"] == "start"]
        batches = {}
        for line in lines:
            if line["kind"] == "batch":
                assert line["step"] not in batches, f"{path}: step {line['step']} trained twice"
                batches[line["step"]] = line
        ranks[int(path.stem.removeprefix("rank"))] = {"starts": starts, "batches": batches}
    return ranks


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _history(run: Path) -> tuple[dict[int, str], list[tuple[str, str]]]:
    losses: dict[int, str] = {}
    evaluations = []
    for row in _metrics(run):
        if row.get("train/loss"):
            assert int(row["step"]) not in losses, f"step {row['step']} logged twice in {run}"
            losses[int(row["step"])] = row["train/loss"]
        if row.get("kormedmcqa/acc"):
            evaluations.append((row["step"], row["kormedmcqa/acc"]))
    return losses, evaluations


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir()) if (run / "checkpoints").is_dir() else []


@pytest.fixture(scope="module")
def runs(repo_root: Path, tmp_path_factory) -> dict:
    """Five DDP runs, each started as soon as what it resumes from is done.

    packed (the demo's rows): uninterrupted; killed at KILL_STEP, then resumed from `last`.
    unpacked (one document per row, so the ranks' batches differ in length and their
    dropout draws, hence their random states, differ): killed at KILL_STEP, then resumed
    from `last` only as far as the next step (all that is compared is its first batch).
    Runs overlap because most of a run's wall time is rank 0 and then rank 1 importing,
    one core each.
    """
    tmp = {name: tmp_path_factory.mktemp(f"ddp-{name}") for name in ("straight", "packed", "unpacked")}
    ports = iter(_free_ports(5))
    after_kill: dict[str, list[str]] = {}

    def start(name: str, kill: int | None, record: str, *extra: str, packing: bool = True) -> _Run:
        config = _config(repo_root, tmp[name], kill, tmp[name] / record, packing=packing)
        return _Run(repo_root, tmp[name] / f"output-{record}", next(ports), "--config", str(config), *DDP, *extra)

    def resume(name: str, kill: int | None, packing: bool) -> _Run:
        after_kill[name] = _checkpoints(tmp[name] / "logs" / "demo" / "version_0")
        return start(name, kill, "rows-resumed", "--ckpt_path", "last", packing=packing)

    then = {"packed_killed": ("packed_resumed", lambda: resume("packed", None, True)),
            "unpacked_killed": ("unpacked_resumed", lambda: resume("unpacked", KILL_STEP, False))}
    began = time.perf_counter()
    running = {"straight": start("straight", None, "rows"),
               "packed_killed": start("packed", KILL_STEP, "rows-killed"),
               "unpacked_killed": start("unpacked", KILL_STEP, "rows-killed", packing=False)}
    done: dict[str, subprocess.CompletedProcess] = {}
    try:
        while running:
            if time.perf_counter() - began > 480:
                raise TimeoutError(f"DDP runs still running after 480 s: {sorted(running)}")
            for name, run in list(running.items()):
                if not run.running():
                    done[name] = running.pop(name).finish()
                    if name in then:
                        later, launch = then[name]
                        running[later] = launch()
            time.sleep(0.1)
    finally:
        for run in running.values():
            run.kill()
    print("DDP runs (s): " + ", ".join(f"{name} {d.seconds:.1f}" for name, d in done.items())
          + f"; all {time.perf_counter() - began:.1f}")
    return {"tmp": tmp, "done": done, "after_kill": after_kill,
            "run": {name: tmp[name] / "logs" / "demo" / "version_0" for name in tmp},
            "rows": {name: _records(tmp[name] / "rows") for name in ("straight",)}
            | {f"{name}_{what}": _records(tmp[name] / f"rows-{what}")
               for name in ("packed", "unpacked") for what in ("killed", "resumed")}}


@pytest.fixture(scope="module")
def straight(runs) -> dict:
    result = runs["done"]["straight"]
    assert result.returncode == 0, result.stderr[-4000:]
    return {"tmp": runs["tmp"]["straight"], "result": result, "run": runs["run"]["straight"],
            "rows": runs["rows"]["straight"]}


def test_two_rank_processes_over_gloo_with_the_epoch_sampler_in_place(straight):
    rows = straight["rows"]
    assert sorted(rows) == [0, 1]
    (zero,), (one,) = rows[0]["starts"], rows[1]["starts"]
    assert zero["pid"] != one["pid"] and zero["pgid"] == one["pgid"] == zero["pid"]  # Lightning launched rank 1
    assert not straight["result"].group_left  # and rank 1 exited by itself
    for rank, start in ((0, zero), (1, one)):
        assert start["world_size"] == 2 and start["global_rank"] == rank
        assert start["strategy"] == "DDPStrategy" and start["backend"] == "gloo"
        assert start["wrapped"] == "DistributedDataParallel"
        assert start["loader"] == "ResumableDataLoader"
        # Lightning left medkor's sampler in place (no DistributedSampler put around it)
        assert (start["sampler"], start["sampler_rank"], start["sampler_replicas"]) == ("EpochShuffleSampler", rank, 2)


def test_caches_are_built_once_and_the_other_rank_only_loads(straight):
    err = straight["result"].stderr
    cache = straight["tmp"] / "cache"
    published = sorted(p.name.split("-")[0] for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert published == ["train", "validation"]  # one folder per split
    assert not [p.name for p in cache.iterdir() if p.name.startswith((TMP_PREFIX, TRASH_PREFIX))]
    for split in ("train", "validation"):
        assert len(re.findall(rf"cache miss for {split} ", err)) == 1, err[-4000:]
        assert len(re.findall(rf"loaded {split} cache ", err)) == 2  # setup on both ranks, memory-mapped
        assert not re.search(rf"cache hit for {split}", err)
    assert "being built by another process" not in err  # rank 1 never tried to build (prepare_data on rank 0)


def _assert_written_once(logs: Path) -> Path:
    assert sorted(p.name for p in (logs / "demo").iterdir()) == ["version_0"]  # no version_1 from rank 1
    run = logs / "demo" / "version_0"
    checkpoints = run / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == CHECKPOINTS  # nothing else: no `.<name>.tmp-*`
    assert not [p for p in run.rglob(".*")]
    assert len(list(run.glob("events.out.tfevents.*"))) >= 1
    rows = _metrics(run)
    train = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert train == list(range(STEPS_PER_EPOCH * EPOCHS))  # every step once, in order
    val = [int(r["step"]) for r in rows if r.get("val/loss")]
    assert val == [STEPS_PER_EPOCH * (e + 1) - 1 for e in range(EPOCHS)]
    evaluations = [int(r["step"]) for r in rows if r.get("kormedmcqa/acc")]
    assert evaluations == [STEPS_PER_EPOCH * e for e in range(EPOCHS + 1)]  # baseline, then every epoch
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS_PER_EPOCH * EPOCHS
    return run


def test_checkpoints_run_folder_and_metrics_are_written_once(straight):
    _assert_written_once(straight["tmp"] / "logs")
    summary = json.loads((straight["run"] / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))
    assert summary  # written by one rank, readable (not interleaved)


def test_sampler_gives_two_ranks_disjoint_halves_of_every_epoch():
    for num_rows in (200, 7):
        for epoch in range(3):
            shares = []
            for rank in (0, 1):
                sampler = EpochShuffleSampler(num_rows, seed=42, num_replicas=2, rank=rank)
                sampler.set_epoch(epoch)
                shares.append(list(sampler))
            assert len(shares[0]) == len(shares[1]) == (num_rows + 1) // 2
            if num_rows % 2 == 0:
                assert not set(shares[0]) & set(shares[1])
                assert sorted(shares[0] + shares[1]) == list(range(num_rows))
            else:  # padded by wrapping: every row, and exactly one of them twice
                assert set(shares[0]) | set(shares[1]) == set(range(num_rows))
                assert len(set(shares[0]) & set(shares[1])) == 1


def test_ranks_train_on_disjoint_halves_of_each_epoch(straight):
    rows = straight["rows"]
    steps = list(range(STEPS_PER_EPOCH * EPOCHS))
    for rank in (0, 1):
        assert sorted(rows[rank]["batches"]) == steps
    seen_by_epoch = []
    for epoch in range(EPOCHS):
        mine = [[h for s in steps if rows[r]["batches"][s]["epoch"] == epoch for h in rows[r]["batches"][s]["rows"]]
                for r in (0, 1)]
        assert len(mine[0]) == len(mine[1]) == STEPS_PER_EPOCH * BATCH_SIZE
        assert len(set(mine[0])) == len(set(mine[1])) == STEPS_PER_EPOCH * BATCH_SIZE
        assert not set(mine[0]) & set(mine[1])
        seen_by_epoch.append(mine)
    assert seen_by_epoch[0] != seen_by_epoch[1]  # reshuffled for the second epoch
    for step in steps:  # both ranks at the same position of the same epoch
        assert rows[0]["batches"][step]["batch_idx"] == rows[1]["batches"][step]["batch_idx"]

    # and they are exactly the rank's slices of the epoch's global order, batched as the loader does
    (train,) = [p for p in (straight["tmp"] / "cache").iterdir() if p.is_dir() and p.name.startswith("train-")]
    dataset = open_folder(train)[0]
    collate = Collator(json.loads((train / "manifest.json").read_text(encoding="utf-8"))["pad_token_id"])
    seed = yaml.safe_load((straight["run"] / "config.yaml").read_text(encoding="utf-8"))["data"]["seed"]
    for rank in (0, 1):
        sampler = EpochShuffleSampler(len(dataset), seed, num_replicas=2, rank=rank, batch_size=BATCH_SIZE)
        for step in steps:
            epoch, batch_idx = divmod(step, STEPS_PER_EPOCH)
            sampler.set_epoch(epoch)
            indices = sampler.indices()[batch_idx * BATCH_SIZE:(batch_idx + 1) * BATCH_SIZE]
            batch = collate([dataset[i] for i in indices])
            assert rows[rank]["batches"][step]["rows"] == [digest(row) for row in batch["input_ids"]]


def _assert_killed_whole_group(runs: dict, name: str) -> None:
    killed = runs["done"][f"{name}_killed"]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert not killed.group_left  # rank 1 died with rank 0: nothing of the run is left
    assert max(runs["rows"][f"{name}_killed"][0]["batches"]) == KILL_STEP  # killed as that step began
    assert runs["after_kill"][name] == ["last.ckpt", "step2.ckpt", "step4.ckpt"]  # no temp file of a torn save


def test_sigkill_of_all_ranks_then_resume_from_last_is_exact(straight, runs):
    _assert_killed_whole_group(runs, "packed")
    again, run = runs["done"]["packed_resumed"], runs["run"]["packed"]
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"continuing run {run}" in again.stderr
    assert "cache hit for train" in again.stderr and "cache miss" not in again.stderr
    _assert_written_once(run.parent.parent)

    losses, evaluations = _history(run)
    want_losses, want_evaluations = _history(straight["run"])
    assert losses == want_losses  # the CSV holds the float's repr: equal strings are equal bits
    assert evaluations == want_evaluations

    # every rank continues with the very batches and random state of the uninterrupted run
    resumed_from = KILL_STEP - 1
    for rank in (0, 1):
        (start,) = runs["rows"]["packed_resumed"][rank]["starts"]
        assert start["start_step"] == resumed_from
        got = runs["rows"]["packed_resumed"][rank]["batches"]
        want = straight["rows"][rank]["batches"]
        assert sorted(got) == list(range(resumed_from, STEPS_PER_EPOCH * EPOCHS))
        for step in got:
            assert got[step]["rows"] == want[step]["rows"], f"rank {rank} step {step}: other rows"
            assert got[step]["rng"] == want[step]["rng"], f"rank {rank} step {step}: other random state"

    for name in ("last.ckpt", "step6.ckpt"):
        got, want = _weights(run, name), _weights(straight["run"], name)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name


def _unpacked_resume(runs: dict) -> tuple[dict, dict]:
    """(the killed run's batch lines, the resumed run's) per rank, at the step the resumed run starts from.

    Nothing draws random numbers between a step checkpoint and the next batch, so the
    killed run's line for that step is what the resumed run must see on the same rank.
    """
    _assert_killed_whole_group(runs, "unpacked")
    again = runs["done"]["unpacked_resumed"]
    assert again.returncode == -signal.SIGKILL, again.stderr[-4000:]  # stopped as the step after began
    assert f"continuing run {runs['run']['unpacked']}" in again.stderr
    step = KILL_STEP - 1
    killed = {rank: runs["rows"]["unpacked_killed"][rank]["batches"][step] for rank in (0, 1)}
    resumed = {rank: runs["rows"]["unpacked_resumed"][rank]["batches"][step] for rank in (0, 1)}
    return killed, resumed


def test_unpacked_rows_resume_on_every_rank_at_its_own_batch(runs):
    killed, resumed = _unpacked_resume(runs)
    # the premise of the next test: here the ranks' random states really differ
    assert killed[0]["rng"] != killed[1]["rng"]
    for rank in (0, 1):
        assert resumed[rank]["rows"] == killed[rank]["rows"]
    assert resumed[0]["rng"] == killed[0]["rng"]


def test_every_rank_resumes_with_its_own_random_state(runs):
    killed, resumed = _unpacked_resume(runs)
    assert resumed[1]["rng"] == killed[1]["rng"]
