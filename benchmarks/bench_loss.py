"""Peak memory and time of the loss step at MedGemma's shape: fused versus full logits.

The loss step is the output head plus cross-entropy, forward and backward, from the
final hidden states (hidden 2,560) to a 272,843-token vocabulary, the head trainable
(tied embedding training). Variants, each in a fresh process so its peak is its own:
- `naive`: full logits and `F.cross_entropy`, as transformers computes the loss;
- `chunked`: the replaced method (checkpointed chunks of `--chunk` positions), kept
  here for the record;
- `fused`: `medkor.model.loss.next_token_loss`, `loss_impl: torch` (what training uses);
- `recompute`: the same with `loss_impl: torch_recompute`.

Gradients exist before the measured step, as in training: a warm-up step on 16
tokens allocates them. The measured step then drops them first as `zero_grad` does
(or, with `--accumulate`, adds into them as a gradient-accumulation micro-batch
does). Seconds: wall clock of the step; CPU seconds: the process's CPU time over it
(all threads), less disturbed by other jobs on a shared machine. Peak = the
process's peak resident memory during the step (reset through /proc/self/clear_refs
just before it) minus its resident memory just before it; on CUDA,
`max_memory_allocated` over `memory_allocated`.

Where the naive step would not fit in 80 % of the memory available (MemAvailable;
its need taken as head + gradient + two float32 logits-sized tensors), its row is
extrapolated linearly in tokens from two measured naive steps (seq / 8 and
seq / 4, or the two largest measured in the same run) and marked `estimated`.

    python benchmarks/bench_loss.py                                  # V=272,843, H=2,560, 2,048 tokens
    python benchmarks/bench_loss.py --seq 512 --accumulate --variants naive fused recompute
    python benchmarks/bench_loss.py --seq 1024 --variants fused --precision 32 bf16-mixed

`--precision bf16-mixed` runs the step under bf16 autocast with the float32 head
and hidden states of a `bf16-mixed` run (what `--dtype bfloat16` does not: that
makes the tensors themselves bf16). Several precisions give one row each per
variant, in the same run. CPU bf16 matrix products run on whatever the CPU offers
(AMX or AVX-512 BF16 through oneDNN, else a slow emulation): their speed says
nothing about a GPU's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("naive", "chunked", "fused", "recompute")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def _replaced_chunked_loss(hidden, weight, labels, chunk_size):
    """The loss medkor trained with before the fused one: checkpointed chunks of positions."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from medkor.model.loss import shift_for_next_token

    def chunk_sum(h, w, y):
        return F.cross_entropy(F.linear(h, w).float(), y, reduction="sum")

    h, y = shift_for_next_token(hidden, labels)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(y), chunk_size):
        total = total + checkpoint(chunk_sum, h[start:start + chunk_size], weight, y[start:start + chunk_size],
                                   use_reentrant=False)
    return total / len(y)


def worker(args: argparse.Namespace) -> dict:
    """One variant, one process: loss, seconds and peak bytes of one measured step."""
    import torch

    sys.path.insert(0, str(ROOT))
    from medkor.model.loss import naive_cross_entropy, next_token_loss

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    seq = args.seq[0]
    hidden = torch.randn(args.batch, seq, args.hidden, device=device, dtype=dtype).requires_grad_(True)
    weight = torch.randn(args.vocab, args.hidden, device=device, dtype=dtype).mul_(0.02).requires_grad_(True)
    labels = torch.randint(0, args.vocab, (args.batch, seq), device=device)
    labels[:, :8] = -100

    def loss_of(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision[0] == "bf16-mixed"):
            return _loss_of(h, y)

    def _loss_of(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if args.variant == "naive":
            return naive_cross_entropy(h @ weight.T, y)
        if args.variant == "chunked":
            return _replaced_chunked_loss(h, weight, y, args.chunk)
        impl = "torch" if args.variant == "fused" else "torch_recompute"
        return next_token_loss(h, weight, y, args.chunk, None, impl)[0]

    warm = hidden[:, :16].detach().requires_grad_(True)
    loss_of(warm, labels[:, :16].clamp(min=0)).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        open("/proc/self/clear_refs", "w").write("5")  # resets the peak RSS to the current one
        base = _status_kib("VmRSS:") * 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    if not args.accumulate:  # what zero_grad(set_to_none=True) does before the step
        weight.grad = None
    loss = loss_of(hidden, labels)
    loss.backward()
    value = loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_kib("VmHWM:") * 1024 - base
    return {"variant": args.variant, "precision": args.precision[0], "seq": seq, "loss": value, "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "peak_bytes": peak,
            "device": str(device), "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _run(args: argparse.Namespace, variant: str, seq: int, precision: str = "32") -> dict:
    cmd = [sys.executable, __file__, "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--batch",
           str(args.batch), "--seq", str(seq), "--chunk", str(args.chunk), "--dtype", args.dtype,
           "--precision", precision, "--variant", variant] + (["--accumulate"] if args.accumulate else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(f"  ran {variant} ({precision}) at {seq} tokens: {result['seconds']:.1f} s ({result['cpu_seconds']:.1f} s CPU), "
          f"{result['peak_bytes'] / 2**20:,.0f} MiB",
          file=sys.stderr, flush=True)
    return result


def _extrapolate(a: dict, b: dict, seq: int) -> dict:
    """Naive at `seq` tokens, linear in tokens through two measured naive steps."""
    def line(key: str) -> float:
        slope = (b[key] - a[key]) / (b["seq"] - a["seq"])
        return a[key] + slope * (seq - a["seq"])

    return {"variant": "naive", "precision": a["precision"], "seq": seq, "loss": None, "seconds": line("seconds"),
            "cpu_seconds": line("cpu_seconds"), "peak_bytes": line("peak_bytes"), "device": a["device"],
            "estimated": (a["seq"], b["seq"])}


def _naive_need_bytes(args: argparse.Namespace, seq: int) -> int:
    """What a naive step's process holds at its peak: head and its gradient, plus two fp32 logits-sized tensors."""
    item = 4 if args.dtype == "float32" else 2
    return 2 * args.vocab * args.hidden * item + 2 * args.batch * seq * args.vocab * 4


def _naive(args: argparse.Namespace, seq: int, measured: dict[int, dict], precision: str = "32") -> dict:
    """Measure naive at `seq`, or, where it would not fit in 80 % of the memory available, extrapolate it.

    The fit uses the two largest naive steps measured in this run, or measures them at
    seq / 8 and seq / 4. The naive peak is not linear in tokens over small counts (at
    MedGemma's shape it grows by one float32 logits row per token from 512 to 1,024
    tokens, by 2.5 rows from 1,024 to 2,048), so the nearer the points, the better.
    """
    if _naive_need_bytes(args, seq) <= 0.8 * _mem_available_bytes():
        measured[seq] = _run(args, "naive", seq, precision)
        return measured[seq]
    points = sorted((r for r in measured.values() if r["seq"] < seq), key=lambda r: r["seq"])
    if len(points) < 2:
        for n in (max(seq // 8, 16), max(seq // 4, 32)):
            if n not in measured:
                measured[n] = _run(args, "naive", n, precision)
        points = [measured[max(seq // 8, 16)], measured[max(seq // 4, 32)]]
    return _extrapolate(points[-2], points[-1], seq)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=272843, help="vocabulary (head rows)")
    parser.add_argument("--hidden", type=int, default=2560, help="hidden size")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, nargs="+", default=[2048], help="tokens per sequence, one table each")
    parser.add_argument("--chunk", type=int, default=512, help="loss_chunk_size of chunked, fused and recompute")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["naive", "chunked", "fused"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--precision", nargs="+", choices=["32", "bf16-mixed"], default=["32"],
                        help="32: float32 throughout; bf16-mixed: bf16 autocast over float32 tensors (one row each)")
    parser.add_argument("--accumulate", action="store_true",
                        help="the measured step adds into existing gradients (accumulation micro-batch)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return 0
    ok = True
    for seq in sorted(args.seq):
        results = []
        for precision in args.precision:
            naive_measured: dict[int, dict] = {}
            results += [_naive(args, seq, naive_measured, precision) if v == "naive" else _run(args, v, seq, precision)
                        for v in args.variants]
        ref = results[0]
        print(f"\nloss step, V={args.vocab} H={args.hidden} B={args.batch} T={seq} chunk={args.chunk} "
              f"{args.dtype}{' accumulating' if args.accumulate else ''}, device {ref['device']}")
        print(f"{'variant':<24}{'loss':>12}{'|diff|':>10}{'seconds':>10}{'cpu s':>10}{'peak MiB':>10}"
              f"{'mem ratio':>11}{'time ratio':>11}{'cpu ratio':>11}")
        for r in results:
            diff: Optional[float] = None
            # the loss is compared within one precision: bf16 logits round differently from float32 ones
            same = next(x for x in results if x["precision"] == r["precision"])
            if r["loss"] is not None and same["loss"] is not None:
                diff = abs(r["loss"] - same["loss"])
                ok &= diff <= 1e-5
            loss = f"{r['loss']:>12.6f}" if r["loss"] is not None else f"{'-':>12}"
            print(f"{r['variant'] + ' (' + r['precision'] + ')':<24}{loss}{(f'{diff:.1e}' if diff is not None else '-'):>10}"
                  f"{r['seconds']:>10.1f}{r['cpu_seconds']:>10.1f}{r['peak_bytes'] / 2**20:>10,.0f}"
                  f"{ref['peak_bytes'] / max(r['peak_bytes'], 1):>10.2f}x{r['seconds'] / ref['seconds']:>10.2f}x"
                  f"{r['cpu_seconds'] / ref['cpu_seconds']:>10.2f}x")
        if "estimated" in ref:
            print(f"{ref['variant']} does not fit in {_mem_available_bytes() / 2**30:.1f} GiB available: its row is "
                  f"extrapolated linearly in tokens from the measured steps at {ref['estimated'][0]} and "
                  f"{ref['estimated'][1]} tokens")
    print("losses of one precision equal within 1e-5" if ok else "LOSSES DIFFER by more than 1e-5")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
