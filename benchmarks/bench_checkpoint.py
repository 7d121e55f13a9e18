"""Step time of a step that saves a checkpoint against one that does not: written on the step or beside it.

A Lightning fit on CPU of a stack of `--layers` float32 linear layers of `--width`
(AdamW), whose checkpoint (weights plus both AdamW moments) is about 12 bytes per
parameter: 1.03 GiB with the defaults. `ModelCheckpoint` saves `last.ckpt` every
`--every` optimizer steps through
- `sync`: `AtomicCheckpointIO`, the write and its fsync on the training thread;
- `async`: `AsyncAtomicCheckpointIO` (what `medkor fit` installs): the step takes a
  host copy, a writer thread writes it atomically and fsyncs.
Each variant runs in a fresh process, one after the other in one run. A step's time
runs from one batch start to the next, so the checkpoint callback's save after the
step is inside it. Reported: the median non-saving step (the first two steps left
out: allocations), each saving step, their ratio, and the median of the steps that
ran while a background write was still going (they share the cores with it). The
last write is waited for at the end of the fit, outside the measured steps; the
total fit time shows it. On a shared machine step times swing with other jobs, so
two figures that do not are reported too: the save's own wall time on the training
thread (from the end of the step's work to the next batch start: the checkpoint
callback and the save) and the training thread's CPU seconds per step
(`time.thread_time`: the writer thread's work is not in it).

    python benchmarks/bench_checkpoint.py                 # 1.03 GiB checkpoint, saves at steps 6 and 12
    python benchmarks/bench_checkpoint.py --layers 4 --steps 8 --every 4    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("sync", "async")


def worker(args: argparse.Namespace) -> dict:
    """One variant, one process: per-step seconds, which steps saved, fit time, checkpoint size."""
    import torch
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(ROOT))
    from medkor.callbacks.async_checkpoint_io import AsyncAtomicCheckpointIO, CheckpointWriteWatch
    from medkor.callbacks.checkpoint_io import AtomicCheckpointIO

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    class Stack(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(*(torch.nn.Linear(args.width, args.width) for _ in range(args.layers)))

        def training_step(self, batch, batch_idx):
            return self.layers(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    class StepClock(Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.cpu: list[float] = []
            self.ends: list[float] = []
            self.saving: list[int] = []
            self.overlapped: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            io = trainer.strategy.checkpoint_io
            if isinstance(io, AsyncAtomicCheckpointIO) and io.pending():
                self.overlapped.append(len(self.starts))
            self.starts.append(time.perf_counter())
            self.cpu.append(time.thread_time())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())  # before the checkpoint callback's save
            if trainer.global_step % args.every == 0:
                self.saving.append(len(self.starts) - 1)

    clock = StepClock()
    io = AsyncAtomicCheckpointIO() if args.variant == "async" else AtomicCheckpointIO()
    folder = Path(args.dir) / args.variant
    # the clock before the checkpoint callback, so a step's window holds the save that follows it
    callbacks = [CheckpointWriteWatch(), clock,
                 ModelCheckpoint(dirpath=folder, every_n_train_steps=args.every, save_top_k=0, save_last=True)]
    trainer = Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, plugins=[io], callbacks=callbacks)
    data = DataLoader(torch.randn(args.steps, args.batch, args.width), batch_size=None)
    start = time.perf_counter()
    trainer.fit(Stack(), train_dataloaders=data)
    fit_seconds = time.perf_counter() - start
    end_of_steps = clock.starts[1:] + [None]
    steps = [b - a for a, b in zip(clock.starts, end_of_steps) if b is not None]
    cpu = [b - a for a, b in zip(clock.cpu, clock.cpu[1:])]
    after_work = [b - a for a, b in zip(clock.ends, clock.starts[1:])]
    size = (folder / "last.ckpt").stat().st_size
    return {"variant": args.variant, "steps": steps, "cpu": cpu, "after_work": after_work,
            "saving": [i for i in clock.saving if i < len(steps)],
            "overlapped": [i for i in clock.overlapped if i < len(steps)], "fit_seconds": fit_seconds,
            "checkpoint_bytes": size}


def _run(args: argparse.Namespace, variant: str, folder: str) -> dict:
    cmd = [sys.executable, __file__, "--layers", str(args.layers), "--width", str(args.width), "--batch",
           str(args.batch), "--steps", str(args.steps), "--every", str(args.every), "--threads", str(args.threads),
           "--dir", folder, "--variant", variant]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22, help="linear layers (4.2 M parameters each at 2,048)")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=512, help="rows per step (sets the step's compute)")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--every", type=int, default=6, help="optimizer steps between saves of last.ckpt")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--dir", help="where checkpoints go (default: a temporary folder, removed after)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return 0
    ok = True
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        results = [_run(args, v, folder) for v in args.variants]
    print(f"\n{args.layers} x Linear({args.width}), batch {args.batch}, AdamW, CPU ({os.cpu_count()} cores), "
          f"checkpoint {results[0]['checkpoint_bytes'] / 2**30:.2f} GiB, saved every {args.every} steps")
    print(f"{'variant':<8}{'plain step s':>14}{'saving steps s':>22}{'ratio':>14}{'during write s':>16}{'fit s':>8}"
          f"{'save on step s':>18}{'thread CPU ratio':>20}")
    for r in results:
        plain = [s for i, s in enumerate(r["steps"]) if i >= 2 and i not in r["saving"] and i not in r["overlapped"]]
        during = [s for i, s in enumerate(r["steps"]) if i in r["overlapped"] and i not in r["saving"]]
        base = statistics.median(plain)
        saving = [r["steps"][i] for i in r["saving"]]
        ratios = [s / base for s in saving]
        cpu_plain = statistics.median(c for i, c in enumerate(r["cpu"]) if i >= 2 and i not in r["saving"])
        cpu_ratios = [r["cpu"][i] / cpu_plain for i in r["saving"]]
        on_step = [r["after_work"][i] for i in r["saving"]]
        if r["variant"] == "async":
            ok &= max(ratios) <= 1.2
        print(f"{r['variant']:<8}{base:>14.2f}{', '.join(f'{s:.2f}' for s in saving):>22}"
              f"{', '.join(f'{x:.2f}x' for x in ratios):>14}"
              f"{(f'{statistics.median(during):.2f} ({len(during)})' if during else '-'):>16}{r['fit_seconds']:>8.1f}"
              f"{', '.join(f'{x:.2f}' for x in on_step):>18}{', '.join(f'{x:.2f}x' for x in cpu_ratios):>20}")
    print("async saving steps within 1.2x a plain step" if ok else "ASYNC SAVING STEP ABOVE 1.2x a plain step")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
