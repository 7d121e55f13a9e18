"""Ctrl-C and SIGTERM through the real `medkor fit`: saved and resumable wherever the run is.

Each test starts `python -m medkor fit` on the exact-resume demo config (2 epochs of
6 steps, step checkpoints every 2 steps) with a callback that signals the process at
a chosen point: in training (SIGINT, once and twice), in validation and inside a
KorMedMCQA evaluation. The stopped run must exit with 128 + the signal, leave a
loadable `last.ckpt` written at that point, and `--ckpt_path last` must finish the run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.run.resume_config import resume_config, write_config

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 6


class SignalTwice(Callback):
    """Send `signum` to this process twice in a row when the batch of `step` begins (a double Ctrl-C)."""

    def __init__(self, step: int, signum: int = int(signal.SIGINT)) -> None:
        self.step, self.signum, self._sent = step, signum, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self._sent:
            self._sent = True
            os.kill(os.getpid(), self.signum)
            os.kill(os.getpid(), self.signum)


class SignalOnRank(Callback):
    """Send `signum` to this process when the batch of `step` begins, on global rank `rank` only."""

    def __init__(self, step: int, rank: int, signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.rank, self.signum, self._sent = step, rank, signum, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self._sent:
            self._sent = True
            os.kill(os.getpid(), self.signum)


class SignalInValidation(Callback):
    """Send `signum` when the first validation batch of the fit begins."""

    def __init__(self, signum: int) -> None:
        self.signum, self._sent = signum, False

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._sent and not trainer.sanity_checking:
            self._sent = True
            os.kill(os.getpid(), self.signum)


class SignalInEvaluation(Callback):
    """Send `signum` in the first forward pass of the model in eval mode (KorMedMCQA's own batches) at `step`."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step, self._sent = signum, step, False

    def on_train_start(self, trainer, pl_module) -> None:
        def send(module: Any, args: Any, kwargs: Any) -> None:
            if not module.training and trainer.global_step == self.step and not self._sent:
                self._sent = True
                os.kill(os.getpid(), self.signum)
                print(f"signalled in an evaluation batch at step {trainer.global_step}", file=sys.stderr)

        pl_module.model.register_forward_pre_hook(send, with_kwargs=True)


def _config(repo_root: Path, tmp: Path, extra: list[dict[str, Any]], eval_batch_size: int = 12) -> Path:
    config = resume_config(repo_root, tmp / "logs", 2, STEPS_PER_EPOCH, extra)
    config["data"].update(cache_dir=str(tmp.parent / "cache"))
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("KorMedMCQAEval"):
            callback["init_args"]["batch_size"] = eval_batch_size
    return write_config(config, tmp / f"fit-{len(list(tmp.glob('fit-*.yaml')))}.yaml")


def _fit(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "medkor", "fit", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=400)


def _resume_finishes(repo_root: Path, tmp: Path, run: Path) -> None:
    resumed = _fit(repo_root, "--config", str(_config(repo_root, tmp, [])), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing run {run}" in resumed.stderr
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    with (run / "metrics.csv").open(encoding="utf-8") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert sorted(steps) == list(range(2 * STEPS_PER_EPOCH))  # every step logged once, none lost or repeated


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signals")  # one data cache for every run of this file


def _case(shared: Path, name: str) -> Path:
    folder = shared / name
    folder.mkdir()
    return folder


def _last(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_ctrl_c_saves_at_the_step_exits_130_and_resumes(repo_root, shared):
    tmp = _case(shared, "sigint")
    kill = {"class_path": "tests.run.kill_at.KillAt", "init_args": {"step": 3, "signum": int(signal.SIGINT)}}
    stopped = _fit(repo_root, "--config", str(_config(repo_root, tmp, [kill])))
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    run = tmp / "logs" / "demo" / "version_0"
    assert f"received SIGINT: saved {run / 'checkpoints' / 'last.ckpt'} at global step 4" in stopped.stderr
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    assert _last(run)["global_step"] == 4
    _resume_finishes(repo_root, tmp, run)


def test_a_second_ctrl_c_stops_at_once_without_saving(repo_root, shared):
    tmp = _case(shared, "twice")
    twice = {"class_path": "tests.run.test_signals.SignalTwice", "init_args": {"step": 3}}
    stopped = _fit(repo_root, "--config", str(_config(repo_root, tmp, [twice])))
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "received SIGINT again: stopped at once at global step 3, nothing saved" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    run = tmp / "logs" / "demo" / "version_0"
    assert _last(run)["global_step"] == 2  # the step checkpoint before the signals; step 3 never finished
    _resume_finishes(repo_root, tmp, run)


def test_a_signal_in_validation_is_acted_on_after_the_current_batch(repo_root, shared):
    tmp = _case(shared, "validation")
    sender = {"class_path": "tests.run.test_signals.SignalInValidation", "init_args": {"signum": int(signal.SIGTERM)}}
    stopped = _fit(repo_root, "--config", str(_config(repo_root, tmp, [sender])))
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run = tmp / "logs" / "demo" / "version_0"
    assert f"at global step {STEPS_PER_EPOCH} (in validation)" in stopped.stderr
    checkpoint = _last(run)
    assert checkpoint["global_step"] == STEPS_PER_EPOCH
    # saved after the first of the two validation batches, not after the whole loop
    val = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    assert val["current"]["processed"] == 1 and val["total"]["processed"] == 1
    _resume_finishes(repo_root, tmp, run)


def test_a_signal_in_a_kormedmcqa_evaluation_is_acted_on_before_its_next_batch(repo_root, shared):
    tmp = _case(shared, "evaluation")
    # the signal comes during the first batch of the first epoch's evaluation (12 questions, batches of 4)
    sender = {"class_path": "tests.run.test_signals.SignalInEvaluation",
              "init_args": {"signum": int(signal.SIGINT), "step": STEPS_PER_EPOCH}}
    stopped = _fit(repo_root, "--config", str(_config(repo_root, tmp, [sender], eval_batch_size=4)))
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert f"signalled in an evaluation batch at step {STEPS_PER_EPOCH}" in stopped.stderr
    assert f"KorMedMCQA (epoch 0, step {STEPS_PER_EPOCH})" not in stopped.stderr  # it did not run to its end
    assert f"at global step {STEPS_PER_EPOCH} (in a KorMedMCQA evaluation)" in stopped.stderr
    run = tmp / "logs" / "demo" / "version_0"
    assert _last(run)["global_step"] == STEPS_PER_EPOCH
    _resume_finishes(repo_root, tmp, run)
    with (run / "metrics.csv").open(encoding="utf-8") as f:
        evaluated = [int(r["step"]) for r in csv.DictReader(f) if r.get("kormedmcqa/acc")]
    assert evaluated == [0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # the interrupted one ran again, once


def test_under_ddp_a_signal_to_one_rank_stops_both_at_the_next_logging_step(repo_root, shared):
    """Two gloo ranks: only rank 1 is signalled; rank 0 learns it in the logging step's read (with the guard's)."""
    tmp = _case(shared, "ddp")
    extra = [{"class_path": "tests.run.test_signals.SignalOnRank", "init_args": {"step": 0, "rank": 1}},
             {"class_path": "medkor.callbacks.finite_guard.NonFiniteGuard"}]
    config = resume_config(repo_root, tmp / "logs", 1, 4, extra)
    config["trainer"].update(log_every_n_steps=2)  # logging steps end at global steps 2 and 4
    config["data"].update(cache_dir=str(tmp.parent / "cache"), batch_size=8)
    path = write_config(config, tmp / "ddp.yaml")
    env = {**os.environ, "PYTHONPATH": str(repo_root), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    for name in ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(name, None)
    stopped = subprocess.run(
        [sys.executable, "-m", "medkor", "fit", "--config", str(path), "--trainer.strategy", "ddp",
         "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=400)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run = tmp / "logs" / "demo" / "version_0"
    # signalled in step 0, acted on at the end of step 1 (the first logging step), by both ranks
    assert f"received SIGTERM: saved {run / 'checkpoints' / 'last.ckpt'} at global step 2" in stopped.stderr
    assert _last(run)["global_step"] == 2
