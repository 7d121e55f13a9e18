"""The global training order at 10^8 rows: cost per row, cost of a resume, memory; beside the per-rank shuffle it replaced.

    python benchmarks/bench_sampler.py --rows 100000000 --steps 2000

Three sources (60 %, 30 %, 10 % of `--rows`), 8 ranks, micro batch 8, 4 micro batches
accumulated (global batch 256). Measured in one process, side by side:

- `global`: `MixtureSampler` for rank 3; the time to the first row of an epoch and of
  a resume at the middle of it, the time per row of `--steps` global steps, the
  memory it holds (tracemalloc peak: numpy and Python allocations) and the same at
  `--rows / 10` (it must not grow with the rows);
- `per-rank permutation`: what medkor drew before (`torch.randperm(rows)` on every
  rank, its share as a Python list), at `--small` rows (default 10^7: at 10^8 it needs
  about 4 GB per rank): time to the first row and memory, scaled linearly to `--rows`.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medkor.data.mixture import Mixture, MixtureSampler  # noqa: E402

WORLD, RANK, BATCH, ACCUMULATE = 8, 3, 8, 4


def _sampler(rows: int) -> MixtureSampler:
    sizes = [rows * 6 // 10, rows * 3 // 10, rows - rows * 6 // 10 - rows * 3 // 10]
    mix = Mixture(["ko_med", "ko_general", "en_med"], [0.6, 0.3, 0.1])
    return MixtureSampler(sizes, 42, mix, num_replicas=WORLD, rank=RANK, batch_size=BATCH, accumulate=ACCUMULATE)


def measure_global(rows: int, steps: int) -> dict[str, float]:
    tracemalloc.start()
    began = time.perf_counter()
    sampler = _sampler(rows)
    sampler.set_epoch(3)
    iterator = iter(sampler)
    next(iterator)
    first = time.perf_counter() - began

    began = time.perf_counter()
    resumed = _sampler(rows)
    resumed.set_epoch(3)
    resumed.start = sampler.steps // 2 * sampler.global_batch  # the middle of the epoch
    resumed_iterator = iter(resumed)
    next(resumed_iterator)
    resume = time.perf_counter() - began

    per_step = BATCH * ACCUMULATE
    began = time.perf_counter()
    for _ in range(steps * per_step - 1):
        next(resumed_iterator)
    per_row = (time.perf_counter() - began) / (steps * per_step)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"first_s": first, "resume_s": resume, "per_row_us": per_row * 1e6, "peak_mb": peak / 2**20}


def measure_permutation(rows: int) -> dict[str, float]:
    tracemalloc.start()
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(42 + 3)
    order = torch.randperm(rows, generator=generator)
    mine = order.tolist()[RANK::WORLD]  # what the per-rank sampler held, as Python ints
    first = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = peak + order.numel() * order.element_size()  # torch's buffer is not traced
    del order, mine
    return {"first_s": first, "peak_mb": held / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--small", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    big = measure_global(args.rows, args.steps)
    tenth = measure_global(args.rows // 10, args.steps)
    old = measure_permutation(args.small)
    scale = args.rows / args.small
    print(f"global order, {args.rows:,} rows, rank {RANK} of {WORLD}, global batch {WORLD * BATCH * ACCUMULATE}:")
    print(f"  first row of an epoch {big['first_s'] * 1e3:.1f} ms, of a resume mid-epoch {big['resume_s'] * 1e3:.1f} ms, "
          f"{big['per_row_us']:.2f} us per row over {args.steps} global steps, peak {big['peak_mb']:.2f} MB")
    print(f"  at {args.rows // 10:,} rows: {tenth['per_row_us']:.2f} us per row, peak {tenth['peak_mb']:.2f} MB")
    print(f"per-rank permutation, {args.small:,} rows: first row {old['first_s']:.2f} s, holds {old['peak_mb']:.0f} MB; "
          f"scaled to {args.rows:,}: {old['first_s'] * scale:.1f} s, {old['peak_mb'] * scale:.0f} MB")
    print(f"ratios at {args.rows:,} rows (per-rank permutation / global order): first row "
          f"{old['first_s'] * scale / big['first_s']:.0f}x, memory {old['peak_mb'] * scale / big['peak_mb']:.0f}x")


if __name__ == "__main__":
    main()
