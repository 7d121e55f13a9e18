"""A run killed at any step and resumed with --ckpt_path equals the uninterrupted run bit for bit.

End to end through `medkor fit` on the demo model (LoRA with dropout, so the random
state matters too): the killed process gets SIGKILL (no handler runs) or SIGTERM
(medkor saves `last.ckpt` at the next step and exits 143), the resumed one continues
in the same run folder, and every logged `train/loss`, the KorMedMCQA history and the
final weights must equal the uninterrupted run's.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.run.resume_config import resume_config, write_config

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 6


def _config(repo_root: Path, tmp_path: Path, name: str, num_workers: int, kill: dict | None) -> Path:
    extra = [{"class_path": "tests.run.kill_at.KillAt", "init_args": kill}] if kill else []
    config = resume_config(repo_root, tmp_path / name, 2, STEPS_PER_EPOCH, extra)
    config["data"].update(cache_dir=str(tmp_path / "cache"), num_workers=num_workers)
    return write_config(config, tmp_path / f"{name}.yaml")


def _fit(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "medkor", "fit", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=400)


def _history(run: Path) -> tuple[dict[int, str], list[tuple[str, str]]]:
    with (run / "metrics.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    losses: dict[int, str] = {}
    for row in rows:
        if row.get("train/loss"):
            assert int(row["step"]) not in losses, f"step {row['step']} logged twice in {run}"
            losses[int(row["step"])] = row["train/loss"]
    evaluations = [(row["step"], row["kormedmcqa/acc"]) for row in rows if row.get("kormedmcqa/acc")]
    return losses, evaluations


def _weights(run: Path) -> dict[str, torch.Tensor]:
    (final,) = (run / "checkpoints").glob(f"step{2 * STEPS_PER_EPOCH}.ckpt")
    return torch.load(final, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(repo_root: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    result = _fit(repo_root, "--config", str(_config(repo_root, tmp, "logs", 0, None)))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "logs" / "demo" / "version_0"


def _assert_same_run(resumed: Path, reference: Path) -> None:
    losses, evaluations = _history(resumed)
    want_losses, want_evaluations = _history(reference)
    assert sorted(losses) == list(range(2 * STEPS_PER_EPOCH))
    assert losses == want_losses  # the CSV holds the float's repr: equal strings are equal bits
    assert evaluations == want_evaluations  # baseline once, then one per epoch
    got, want = _weights(resumed), _weights(reference)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("num_workers, kill_step", [(0, 3), (2, 9)])
def test_sigkill_then_resume_from_last_is_exact(repo_root, tmp_path, uninterrupted, num_workers, kill_step):
    config = _config(repo_root, tmp_path, "logs", num_workers, {"step": kill_step})
    killed = _fit(repo_root, "--config", str(config))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "logs" / "demo" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()

    # the same config without the kill; `last` is found in the run folder and the run continues there
    resumed = _fit(repo_root, "--config", str(_config(repo_root, tmp_path, "logs", num_workers, None)),
                   "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing run {run}" in resumed.stderr
    assert not (tmp_path / "logs" / "demo" / "version_1").exists()
    assert "not resumable" not in resumed.stderr
    _assert_same_run(run, uninterrupted)


def test_sigterm_saves_last_exits_143_and_resumes_exactly(repo_root, tmp_path, uninterrupted):
    config = _config(repo_root, tmp_path, "logs", 0, {"step": 4, "signum": int(signal.SIGTERM)})
    stopped = _fit(repo_root, "--config", str(config))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    run = tmp_path / "logs" / "demo" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert f"saved {last} at global step 5" in stopped.stderr.splitlines()[-1]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 5
    assert "Traceback" not in stopped.stderr

    resumed = _fit(repo_root, "--config", str(_config(repo_root, tmp_path, "logs", 0, None)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(run, uninterrupted)
