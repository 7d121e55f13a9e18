"""A training step that never waits on the host: no device-to-host read between logging steps.

A demo fit through `medkor fit` (in this process) with `HostReadCounter` among its
callbacks: a `TorchFunctionMode` records every call that makes the host wait for the
device on a GPU (`.item()`, `.tolist()`, `bool/int/float` of a tensor, `nonzero`,
boolean-mask indexing, `.cpu()`, `.numpy()`, `masked_select`, ...) from one batch start
to the next. On CPU nothing waits, but the calls are the same on every device, so
counting them here is counting the syncs a GPU step would make. Steps that log
(`log_every_n_steps`) and steps that save a checkpoint may read; every other step must
make none.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch.overrides import TorchFunctionMode

from medkor.callbacks.logging_steps import is_logging_step

Tensor = torch.Tensor
# Calls whose result lives on the host: on a GPU each one waits for the device's queue.
HOST_READS = {
    Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__,
    Tensor.__array__, Tensor.numpy, Tensor.cpu, Tensor.nonzero, torch.nonzero, Tensor.argwhere, torch.argwhere,
    Tensor.masked_select, torch.masked_select, torch.equal, torch.is_nonzero, Tensor.is_nonzero, Tensor.unique,
    torch.unique, torch.allclose, Tensor.allclose,
}
INDEXING = {Tensor.__getitem__, Tensor.__setitem__}
HERE = Path(__file__).resolve()
TORCH_ROOT = Path(torch.__file__).resolve().parent


def _is_bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def _caller() -> str:
    """file:line of the innermost frame outside torch and this file."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path != HERE and TORCH_ROOT not in path.parents:
            return f"{path.name}:{frame.lineno} {frame.name}"
    return "?"


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Optional[list[str]] = None  # None: not inside a window

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.calls is not None:
            if func in HOST_READS or (func in INDEXING and len(args) > 1 and _is_bool_index(args[1])):
                self.calls.append(f"{getattr(func, '__name__', func)} at {_caller()}")
        return func(*args, **kwargs)


class HostReadCounter(Callback):
    """Host reads per training step, from one batch start to the next (or to validation / the epoch's end).

    Each window is labelled `log` (the step logs), `save` (a checkpoint was written in it)
    or `step` (neither: it must read nothing).
    """

    def __init__(self) -> None:
        self.windows: list[tuple[int, str, list[str]]] = []  # (global step at start, kind, calls)
        self._mode = _Recorder()
        self._entered = False
        self._kind = "step"
        self._step = 0

    def _close(self) -> None:
        if self._mode.calls is not None:
            self.windows.append((self._step, self._kind, self._mode.calls))
            self._mode.calls = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close()
        if not self._entered:
            self._mode.__enter__()
            self._entered = True
        self._step, self._kind = trainer.global_step, "log" if is_logging_step(trainer) else "step"
        self._mode.calls = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._mode.calls is not None:
            self._kind = "save"

    def on_validation_start(self, trainer, pl_module) -> None:
        self._close()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close()

    def _leave(self) -> None:
        self._close()
        if self._entered:
            self._mode.__exit__(None, None, None)
            self._entered = False

    def on_train_end(self, trainer, pl_module) -> None:
        self._leave()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._leave()


def _demo_config(repo_root: Path, tmp: Path) -> Path:
    config = yaml.safe_load((repo_root / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    trainer = config["trainer"]
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(tmp / "logs")
    # 10 steps: logging at steps 5 and 10, the step checkpoint (every 10) on a logging step
    trainer.update(max_epochs=1, limit_train_batches=10, limit_val_batches=1, log_every_n_steps=5)
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("KorMedMCQAEval"):
            callback["init_args"].update(max_samples=2)
    trainer["callbacks"].append({"class_path": "tests.run.test_host_sync.HostReadCounter"})
    config["data"]["cache_dir"] = str(tmp / "cache")
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_steps_between_logging_steps_read_nothing_from_the_device(repo_root, tmp_path, monkeypatch):
    from medkor.lightning_cli import run_cli

    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    try:
        cli = run_cli(["fit", "--config", str(_demo_config(repo_root, tmp_path))])
    finally:
        torch.set_num_threads(threads)
    # the config's class_path imports this file under its package name: another module object
    (counter,) = [c for c in cli.trainer.callbacks if type(c).__name__ == HostReadCounter.__name__]
    if os.environ.get("MEDKOR_SHOW_HOST_READS"):
        for step, kind, calls in counter.windows:
            print(step, kind, len(calls), *calls, sep="\n  ")
    kinds = Counter(kind for _, kind, _ in counter.windows)
    assert kinds["step"] >= 6 and kinds["log"] >= 1, counter.windows  # the windows were really watched
    # the counter sees reads where there are some: a logging step reads the logged metrics
    assert all(calls for _, kind, calls in counter.windows if kind == "log")
    reads = {step: calls for step, kind, calls in counter.windows if kind == "step"}
    per_step = sorted(len(calls) for calls in reads.values())
    assert per_step[-1] == 0, (
        f"host reads on steps that do not log (median {per_step[len(per_step) // 2]}): "
        + "; ".join(f"step {s}: {', '.join(c)}" for s, c in reads.items() if c)
    )
