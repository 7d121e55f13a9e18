"""Ranks of `medkor prepare` from the launcher's variables, and the share of the pieces each builds."""

from __future__ import annotations

import pytest

from medkor.data.ranks import RankError, Share, launch_share

@pytest.mark.parametrize("env, per_node, expected", [
    ({}, False, (0, 1)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, False, (3, 8)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, True, (1, 4)),  # node-local cache
    ({"RANK": "1", "WORLD_SIZE": "2"}, True, (1, 2)),  # set by hand, no LOCAL_*: the ranks of this node
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
      "SLURM_TASKS_PER_NODE": "1(x4)"}, False, (2, 4)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
      "SLURM_TASKS_PER_NODE": "1(x4)"}, True, (0, 1)),  # one task per node, each node its own cache
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
      "SLURM_TASKS_PER_NODE": "2(x2),1"}, True, (1, 2)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
      "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, False, (2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
     False, (3, 4)),  # two tasks in each of two array elements
])
def test_share_from_the_launcher(env, per_node, expected):
    share = launch_share(per_node, env)
    assert (share.rank, share.world) == expected


def test_launcher_variables_that_are_not_a_rank_are_one_clear_error():
    with pytest.raises(RankError, match=r"rank 5 is outside 0\.\.1 \(RANK/WORLD_SIZE\)"):
        launch_share(False, {"RANK": "5", "WORLD_SIZE": "2"})
    with pytest.raises(RankError, match="SLURM_PROCID='x' is not a whole number"):
        launch_share(False, {"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})


def test_pieces_are_shared_out_by_size():
    from medkor.data.cache import share_out

    sizes = [16, 1, 1, 1, 4, 4, 4, 4, 1, 1]  # cut sizes vary: every n-th piece would give rank 0 too much
    owners = share_out(sizes, 3)
    loads = [sum(size for size, owner in zip(sizes, owners) if owner == rank) for rank in range(3)]
    assert loads == [16, 11, 10]  # the 16 alone, the rest split as evenly as they go (index modulo: 22, 9, 6)
    assert owners == share_out(sizes, 3)  # the same on every rank
    assert share_out(sizes, 1) == [0] * len(sizes)


# ---------------------------------------------------------------- several ranks building one cache
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from medkor.commands import prepare as prepare_cmd  # noqa: E402
from medkor.data.cache import open_folder, read_manifest  # noqa: E402
from medkor.data.pieces import PieceStore  # noqa: E402
from medkor.data.plan import DataPlan  # noqa: E402
from medkor.data.ranks import prepare_share  # noqa: E402
from tests.data.conftest import korean_docs, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "medkor" / "assets" / "demo" / "tiny-gemma3"


def _corpus(folder: Path, files: int, docs: int) -> Path:
    for index in range(files):
        write_jsonl(folder / f"train-{index}.jsonl", korean_docs(docs, start=index * docs))
    write_jsonl(folder / "validation.jsonl", korean_docs(10, start=10_000))
    return folder


def _config(tmp_path: Path, data: Path, tokenizer_dir: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"model_name_or_path": str(DEMO), "tokenizer_path": str(tokenizer_dir)},
        "data": {"data_dir": str(data), "max_length": 64, "num_proc": 1, "prepare_data_per_node": False},
    }))
    return path


def _launch(config: Path, cache_dir: Path, rank: int | None, world: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if rank is not None:
        env.update(RANK=str(rank), WORLD_SIZE=str(world))
    return subprocess.Popen([sys.executable, "-m", "medkor", "prepare", "--config", str(config), "--data.cache_dir",
                             str(cache_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _lines(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _rows(results: list[dict]) -> dict[str, list]:
    tables = {}
    for result in results:
        folder = Path(result["path"])
        rows = open_folder(folder)[0]
        tables[result["split"]] = [tuple(part.tolist() for part in rows[i]) for i in range(len(rows))]
    return tables


def _pieces(cache_dir: Path) -> dict[str, tuple[int, int]]:
    store = PieceStore(cache_dir)
    return {key: (store.path(key).stat().st_ino, store.path(key).stat().st_mtime_ns) for key in store.keys()}


def test_two_ranks_build_disjoint_pieces_and_rank_zero_assembles_the_same_rows(tmp_path, tokenizer_dir, monkeypatch,
                                                                               capsys):
    config = _config(tmp_path, _corpus(tmp_path / "data", files=6, docs=20), tokenizer_dir)
    shared = tmp_path / "shared"
    rank_one = _launch(config, shared, 1, 2)  # a process of its own, ranked by torchrun's variables
    deadline = time.monotonic() + 60
    while rank_one.poll() is None and not list(shared.glob(".ranks/*rank1.lock.owner")) and time.monotonic() < deadline:
        time.sleep(0.05)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert prepare_cmd.main(["--config", str(config), "--data.cache_dir", str(shared)]) == 0  # rank 0 here
    zero = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    one = _lines(rank_one)
    # about half of the 7 pieces by size
    assert one == [{"rank": 1, "world": 2, "pieces_built": one[0]["pieces_built"], "seconds": one[0]["seconds"]}]
    assert one[0]["pieces_built"] in (3, 4)
    assert [(r["split"], r["status"]) for r in zero] == [("train", "built"), ("validation", "built")]
    assert len(_pieces(shared)) == 7
    # rank 1 packed the row segments of its share of each split too: rank 0 reused them
    for result in zero:
        built = read_manifest(Path(result["path"]))["segments_built"]
        pieces = len(read_manifest(Path(result["path"]))["segments"]) - 1  # the last is the tail
        assert built["reused"] >= pieces // 2 and built["written"] == pieces - built["reused"] + 1, built
    plan = DataPlan.from_options({**_options(tmp_path / "data", tokenizer_dir), "cache_dir": str(tmp_path / "alone")})
    alone = [r.summary() for r in plan.prepare("fit", logging.getLogger("test"))[0]]  # one process, from scratch
    assert [r["key"] for r in alone] == [r["key"] for r in zero]
    assert all(_rows(alone)[split] == table for split, table in _rows(zero).items())
    assert not list((shared / ".ranks").iterdir())  # the ranks' marks are cleaned up


def test_a_killed_rank_leaves_its_finished_pieces_to_the_rerun(tmp_path, tokenizer_dir):
    data = _corpus(tmp_path / "data", files=9, docs=150)
    config = _config(tmp_path, data, tokenizer_dir)
    cache_dir = tmp_path / "shared"
    rank_one = _launch(config, cache_dir, 1, 2)
    deadline = time.monotonic() + 60
    while not _pieces(cache_dir) and time.monotonic() < deadline and rank_one.poll() is None:
        time.sleep(0.01)
    rank_one.send_signal(signal.SIGKILL)
    rank_one.wait()
    before = _pieces(cache_dir)
    assert before, "rank 1 finished no piece before it was killed"
    plan = DataPlan.from_options({**_options(data, tokenizer_dir), "cache_dir": str(cache_dir)})
    # rank 0 of the rerun: rank 1's lock names a dead process, so rank 0 does not wait for it and builds the rest
    built, results = prepare_share(plan.requests("fit"), Share(0, 2), 1, 30, logging.getLogger("test"),
                                   started=time.monotonic() - 3600)
    after = _pieces(cache_dir)
    assert all(after[name] == stamp for name, stamp in before.items())  # reused, not rewritten
    assert 0 < built <= 5 and len(after) == 10  # its own share, then rank 1's missing pieces: 9 train, 1 validation
    fresh = DataPlan.from_options({**_options(data, tokenizer_dir), "cache_dir": str(tmp_path / "fresh")})
    expected = fresh.prepare("fit", logging.getLogger("test"))[0]
    assert [r.key for r in results] == [r.key for r in expected]
    assert all(_rows([r.summary()])[r.split] == _rows([e.summary()])[e.split] for r, e in zip(results, expected))


def _options(data: Path, tokenizer_dir: Path) -> dict:
    from medkor.commands.options_help import class_defaults, datamodule_source

    return {**class_defaults(datamodule_source(), "MedKorDataModule"), "data_dir": str(data),
            "tokenizer_path": str(tokenizer_dir), "max_length": 64, "num_proc": 1}


def test_rank_zero_waits_for_a_live_rank_no_longer_than_the_lock_timeout(tmp_path, tokenizer_dir):
    from medkor.data.lock import LockTimeout
    from medkor.data.ranks import _rank_lock, _run_name

    data = _corpus(tmp_path / "data", files=4, docs=10)
    plan = DataPlan.from_options({**_options(data, tokenizer_dir), "cache_dir": str(tmp_path / "shared")})
    requests = plan.requests("fit")
    busy = _rank_lock(tmp_path / "shared", _run_name(requests), 1)  # rank 1: alive, building, never done
    busy.acquire(timeout=0)
    try:
        start = time.monotonic()
        with pytest.raises(LockTimeout, match=r"waiting for ranks \[1\] to build [34] pieces .*data\.lock_timeout"):
            prepare_share(requests, Share(0, 2), 1, 1.0, logging.getLogger("test"), started=start - 3600)
        assert time.monotonic() - start < 30
    finally:
        busy.release()
