"""Peak memory and time of the loss step: chunked cross-entropy versus full logits.

The loss step is the output head plus cross-entropy, forward and backward, on the
final hidden states of a tiny Gemma 3 (hidden 256) with a large vocabulary (64k by
default) and 1024-token sequences; the head is the tied, trainable embedding, as
in embedding training. Each variant runs in a fresh process so its peak is its own:
on CUDA the peak is `max_memory_allocated`, on CPU the rise of the process's peak
resident memory over its resident memory just before the step.

    python benchmarks/bench_loss.py                     # defaults: V=65536, B=2, T=1024
    python benchmarks/bench_loss.py --vocab 131072 --chunks 1024 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> dict:
    """One variant, one process: returns loss, median seconds and peak bytes of the step."""
    import torch

    sys.path.insert(0, str(ROOT))
    from medkor.model.loss import chunked_cross_entropy, naive_cross_entropy

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hidden = (torch.randn(args.batch, args.seq, args.hidden, device=device)).requires_grad_(True)
    weight = (torch.randn(args.vocab, args.hidden, device=device) * 0.02).requires_grad_(True)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    labels[:, :8] = -100

    def step() -> float:
        hidden.grad = weight.grad = None
        if args.variant == "naive":
            loss = naive_cross_entropy(hidden @ weight.T, labels)
        else:
            loss, _ = chunked_cross_entropy(hidden, weight, labels, chunk_size=int(args.variant))
        loss.backward()
        return loss.item()

    # Gradients exist before the measured step, as in training (they are not the logits' cost).
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    start = time.perf_counter()
    loss = step()
    first = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = [first]
    for _ in range(args.repeats - 1):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"variant": args.variant, "loss": loss, "seconds": statistics.median(times), "peak_bytes": peak,
            "device": str(device)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256], help="chunk sizes to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return 0
    common = ["--vocab", str(args.vocab), "--hidden", str(args.hidden), "--batch", str(args.batch),
              "--seq", str(args.seq), "--repeats", str(args.repeats)]
    results = []
    for variant in ["naive"] + [str(c) for c in args.chunks]:
        out = subprocess.run([sys.executable, __file__, *common, "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    naive = results[0]
    print(f"loss step, V={args.vocab} H={args.hidden} B={args.batch} T={args.seq}, device {naive['device']}")
    print(f"{'variant':<14}{'loss':>12}{'|diff|':>10}{'seconds':>10}{'peak MiB':>10}{'mem ratio':>11}{'time ratio':>11}")
    ok = True
    for r in results:
        diff = abs(r["loss"] - naive["loss"])
        ok &= diff <= 1e-5
        name = "naive" if r["variant"] == "naive" else f"chunked {r['variant']}"
        print(f"{name:<14}{r['loss']:>12.6f}{diff:>10.1e}{r['seconds']:>10.3f}{r['peak_bytes'] / 2**20:>10.0f}"
              f"{naive['peak_bytes'] / max(r['peak_bytes'], 1):>10.2f}x{r['seconds'] / naive['seconds']:>10.2f}x")
    print("losses equal within 1e-5" if ok else "LOSSES DIFFER by more than 1e-5")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
