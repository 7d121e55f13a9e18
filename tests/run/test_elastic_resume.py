"""Elastic resume through `medkor fit` on gloo processes: a run stopped on N ranks continues on M.

The global batch stays 8 rows (2 ranks x `data.batch_size` 4, or 1 rank x 8). Runs
killed (SIGKILL of the whole process group) after the step-4 checkpoint, one on two
ranks and one on one rank, are resumed with `--ckpt_path last` on the other count,
and compared step by step with uninterrupted runs: the rows of every global step
(all ranks together) must be those of the uninterrupted runs, on either rank count,
none seen twice or skipped; the losses before the kill are those of the uninterrupted
run on the same ranks bit for bit, and after it those of the uninterrupted run on
the new ranks up to float rounding (the weights at the checkpoint were summed in
another order). No dropout, so the random state of the ranks does not matter. A
resume with another global batch is refused in one line before the run folder changes.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.run.resume_config import resume_config, write_config
from tests.run.test_ddp import _free_ports, _history, _records, _Run

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 3
EPOCHS = 2
GLOBAL_BATCH = 8
KILL_STEP = 5  # last.ckpt is step 4: one global batch into the second epoch
DDP = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]


def _config(repo_root: Path, tmp: Path, name: str, kill: bool) -> Path:
    record = tmp / f"rows-{name}"
    extra = [{"class_path": "tests.run.ddp_worker.RecordRows", "init_args": {"out": str(record)}}]
    if kill:
        extra.append({"class_path": "tests.run.ddp_worker.KillGroupAt", "init_args": {"step": KILL_STEP}})
    config = resume_config(repo_root, tmp / "logs", EPOCHS, STEPS_PER_EPOCH, extra)
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "KorMedMCQA" not in c["class_path"]]
    config["model"]["lora"]["dropout"] = 0.0
    config["data"].update(cache_dir=str(tmp.parent / "cache"), num_workers=0)
    return write_config(config, tmp / f"config-{name}.yaml")


def _ranks(devices: int) -> list[str]:
    return [*DDP, "--trainer.devices", str(devices), "--data.batch_size", str(GLOBAL_BATCH // devices)]


def _steps(records: dict) -> dict[int, list[str]]:
    """Every global step's rows, all ranks together (sorted: the order inside a step is the ranks')."""
    steps: dict[int, list[str]] = {}
    for rank in records.values():
        for step, line in rank["batches"].items():
            steps.setdefault(step, []).extend(line["rows"])
    return {step: sorted(rows) for step, rows in steps.items()}


@pytest.fixture(scope="module")
def runs(repo_root: Path, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("elastic")
    tmp = {name: base / name for name in ("one", "two", "two_to_one", "one_to_two")}
    ports = iter(_free_ports(7))

    def start(name: str, record: str, devices: int, kill: bool, *extra: str) -> _Run:
        tmp[name].mkdir(exist_ok=True)
        config = _config(repo_root, tmp[name], record, kill)
        return _Run(repo_root, tmp[name] / f"output-{record}", next(ports), "--config", str(config),
                    *_ranks(devices), *extra)

    done: dict[str, subprocess.CompletedProcess] = {}
    snapshot: dict[str, dict[str, bytes]] = {}
    # the cache is built once, by the first run, before the others start
    done["one"] = start("one", "straight", 1, False).finish()
    running = {"two": start("two", "straight", 2, False),
               "two_to_one_killed": start("two_to_one", "killed", 2, True),
               "one_to_two_killed": start("one_to_two", "killed", 1, True)}
    then = {"two_to_one_killed": ("two_to_one", 1), "one_to_two_killed": ("one_to_two", 2)}
    began = time.perf_counter()
    try:
        while running:
            if time.perf_counter() - began > 480:
                raise TimeoutError(f"runs still running after 480 s: {sorted(running)}")
            for name, run in list(running.items()):
                if not run.running():
                    done[name] = running.pop(name).finish()
                    if name in then:
                        target, devices = then[name]
                        if target == "two_to_one":  # first: another global batch, refused
                            runs_folder = tmp[target] / "logs" / "demo" / "version_0"
                            snapshot["before"] = _snapshot(runs_folder)
                            done["refused"] = start(target, "refused", 1, False, "--ckpt_path", "last",
                                                    "--data.batch_size", "4").finish()
                            snapshot["after"] = _snapshot(runs_folder)
                        running[target] = start(target, "resumed", devices, False, "--ckpt_path", "last")
            time.sleep(0.1)
    finally:
        for run in running.values():
            run.kill()
    return {"tmp": tmp, "done": done, "snapshot": snapshot}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _losses(run_dir: Path) -> dict[int, float]:
    return {step: float(loss) for step, loss in _history(run_dir)[0].items()}


@pytest.mark.parametrize("name, before, after", [("two_to_one", "two", "one"), ("one_to_two", "one", "two")])
def test_resumed_on_another_rank_count_continues_at_the_same_global_position(runs, name, before, after):
    done, tmp = runs["done"], runs["tmp"]
    for key in (before, after, f"{name}_killed", name):
        expected = -9 if key.endswith("killed") else 0
        assert done[key].returncode == expected, (key, done[key].stderr[-3000:])
    run = tmp[name] / "logs" / "demo" / "version_0"
    assert f"continuing run {run}" in done[name].stderr
    assert "not resumable" not in done[name].stderr

    straight = {n: _steps(_records(tmp[n] / "rows-straight")) for n in (before, after)}
    assert straight[before] == straight[after]  # one global order, whatever the number of ranks
    killed = _steps(_records(tmp[name] / "rows-killed"))
    resumed = _steps(_records(tmp[name] / "rows-resumed"))
    assert max(killed) == KILL_STEP and sorted(resumed) == list(range(KILL_STEP - 1, STEPS_PER_EPOCH * EPOCHS))
    for step in range(KILL_STEP - 1):
        assert killed[step] == straight[before][step], f"step {step}"
    for step, rows in resumed.items():  # the uninterrupted run's rows on either rank count
        assert len(rows) == GLOBAL_BATCH and rows == straight[after][step] == straight[before][step], f"step {step}"
    second_epoch = [r for s in range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
                    for r in (killed[s] if s < KILL_STEP - 1 else resumed[s])]
    assert len(set(second_epoch)) == len(second_epoch)  # no row twice, none skipped inside the epoch

    losses, want_before, want_after = _losses(run), _losses(tmp[before] / "logs/demo/version_0"), \
        _losses(tmp[after] / "logs/demo/version_0")
    assert sorted(losses) == list(range(STEPS_PER_EPOCH * EPOCHS))
    for step in range(KILL_STEP - 1):
        assert losses[step] == want_before[step]
    for step in range(KILL_STEP - 1, STEPS_PER_EPOCH * EPOCHS):
        assert math.isclose(losses[step], want_after[step], rel_tol=2e-4), (step, losses[step], want_after[step])


def test_another_global_batch_is_refused_before_the_run_folder_changes(runs):
    refused = runs["done"]["refused"]
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = [line for line in refused.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("medkor fit: error: --ckpt_path "), refused.stderr[-3000:]
    assert "global batches of 8 (data.batch_size 4 x 2 devices x 1 accumulated), this run 4" in lines[0]
    assert "set data.batch_size 8 to continue at the same position" in lines[0]
    assert "Traceback" not in refused.stderr
    assert not (runs["tmp"]["two_to_one"] / "rows-refused").exists()  # no step trained
    before, after = runs["snapshot"]["before"], runs["snapshot"]["after"]
    assert "checkpoints/last.ckpt" in before and after == before  # not a byte of the run folder changed
