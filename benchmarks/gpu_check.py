"""One script for one GPU: MedGemma-4B's real shape trained through medkor, in under 8 minutes, offline.

Sections (each timed; a failing one is reported and the others still run):
1. `setup`: a synthetic 262,145-token Gemma-style base tokenizer grown to 272,843
   tokens and a random-init `Gemma3ForConditionalGeneration` with MedGemma-4B's config
   in bfloat16, made on the device and saved (`benchmarks/bench_real_shape.py` makes
   the same on CPU); kept in `--workdir` for the next run.
2. `steps/<policy>`: `MedGemmaModule` (the configs' settings: LoRA r=64 on all seven
   projections, gradient checkpointing, bf16 weights, fused loss) and a Lightning
   Trainer in `bf16-mixed`, `--steps` optimizer steps of 1 x `--tokens` tokens:
   tokens/s and MFU over the steps after the first two (CUDA events, no host waits
   inside the fit), peak memory (`max_memory_allocated`) against `medkor plan --json`
   for the same set-up. A policy the plan says does not fit is skipped with its
   prediction.
3. `sync`: 22 steps of `embeddings+lora`; from the third on, 20 steps under
   `torch.cuda.set_sync_debug_mode("error")`: any call that makes the host wait for
   the GPU raises, and the section names it.
4. `loss`: the loss step at 4,096 tokens x 272,896 rows x 2,560 under bf16 autocast
   (float32 head, as in training): medkor's fused loss, Cut Cross-Entropy when the
   package is installed, and the naive full-logits loss: milliseconds (best of 3) and
   peak memory above the inputs.
5. `kormedmcqa`: `KorMedMCQAEvaluator` on 3,009 synthetic questions in the hub
   schema (doctor 435, nurse 878, pharm 885, dentist 811: the test split's counts)
   with the trained `embeddings+lora` model: questions/s.
6. `fsdp`: the `embeddings+lora` steps again under Lightning's `FSDPStrategy` on the
   one GPU (the settings of `configs/strategies/fsdp.yaml`): tokens/s and peak memory.

`--device cpu --tiny` runs every section on the demo's 1.2 M-parameter model with a
few tokens (a smoke test of the script, seconds; FSDP needs CUDA and is skipped
there). Results: one line per section while it runs, then one JSON object (`--out`).

    python benchmarks/gpu_check.py --out gpu_check.json          # one H100
    python benchmarks/gpu_check.py --device cpu --tiny            # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
DEMO = ROOT / "medkor" / "assets" / "demo"
LORA = {"r": 64, "alpha": 128, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
KORMEDMCQA_TEST = {"doctor": 435, "nurse": 878, "pharm": 885, "dentist": 811}  # 3,009 questions
GIB = 2**30


# ---- set-up ------------------------------------------------------------------------------------------------------

def make_model_on_device(model_dir: Path, base_dir: Path, device: str) -> None:
    """Random-init MedGemma-4B (34 layers) in bfloat16, initialised on `device` and saved with the base tokenizer."""
    import torch
    from bench_real_shape import MEDGEMMA_4B
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    spec = json.loads(json.dumps(MEDGEMMA_4B))
    config = Gemma3Config(**{k: v for k, v in spec.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = Gemma3ForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(torch.float32)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(model_dir)
    del model


def setup(args: argparse.Namespace) -> dict:
    if args.tiny:
        return {"model": str(DEMO / "tiny-gemma3"), "tokenizer": str(DEMO / "tokenizer-extended")}
    from bench_real_shape import make_tokenizers

    base, ext, model = args.workdir / "base-tokenizer", args.workdir / "extended-tokenizer", args.workdir / "model-34"
    if not (ext / "tokenizer.json").is_file():
        make_tokenizers(base, ext)
    if not (model / "config.json").is_file():
        make_model_on_device(model, base, args.device)
    return {"model": str(model), "tokenizer": str(ext)}


# ---- training steps --------------------------------------------------------------------------------------------

def module_args(paths: dict, policy: str, args: argparse.Namespace, fsdp: bool = False) -> dict:
    """MedGemmaModule's arguments as the GPU configs set them (configs/medgemma-4b, strategies/fsdp.yaml)."""
    kwargs = {"model_name_or_path": paths["model"], "tokenizer_path": paths["tokenizer"], "trainable": policy,
              "learning_rate": 1e-4, "gradient_checkpointing": not fsdp,
              "torch_dtype": "float32" if fsdp or policy == "full" else "bfloat16",  # as full.yaml and fsdp.yaml
              "loss_impl": "torch", "loss_chunk_size": 512}
    if "lora" in policy:
        kwargs["lora"] = dict(LORA, r=8, alpha=16) if args.tiny else dict(LORA)
    return kwargs


def _batches(vocab: int, tokens: int, count: int, pin: bool):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (1, tokens), generator=generator)
        rows.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids),
                     "position_ids": torch.arange(tokens).unsqueeze(0)})
    return DataLoader(rows, batch_size=None, pin_memory=pin)


def _step_clock(sync_from: Optional[int]):
    """A callback recording each batch start as a CUDA event (no host wait), optionally under sync-debug 'error'."""
    import torch
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.marks: list[Any] = []

        def _mark(self) -> None:
            if torch.cuda.is_available():
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self.marks.append(event)
            else:
                self.marks.append(time.perf_counter())

        def on_train_start(self, trainer, pl_module) -> None:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._mark()
            if sync_from is not None and trainer.global_step == sync_from and torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("error")

        def on_train_end(self, trainer, pl_module) -> None:
            self._mark()

        def seconds(self) -> list[float]:
            if self.marks and not isinstance(self.marks[0], float):
                torch.cuda.synchronize()
                return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return StepClock()


def _plan_peak(paths: dict, policy: str, args: argparse.Namespace, folder: Path, fsdp: bool = False) -> dict:
    """`medkor plan --json` of the same set-up: the predicted peak and whether it fits."""
    import yaml

    model = {k: v for k, v in module_args(paths, policy, args, fsdp).items() if k != "learning_rate"}
    trainer = {"accelerator": "gpu" if args.device == "cuda" else "cpu", "devices": 1, "precision": "bf16-mixed",
               "max_steps": args.steps}
    if fsdp:
        trainer["strategy"] = {"class_path": "lightning.pytorch.strategies.FSDPStrategy",
                               "init_args": {"sharding_strategy": "FULL_SHARD"}}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = {"trainer": trainer, "model": model,
              "data": {"data_dir": str(folder / "data"), "batch_size": 1, "max_length": args.tokens}}
    path = folder / f"plan-{policy}{'-fsdp' if fsdp else ''}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    if not (ROOT / "medkor" / "commands" / "plan.py").is_file():
        return {"plan": "medkor plan is not available in this checkout"}
    done = subprocess.run([sys.executable, "-m", "medkor", "plan", "--config", str(path), "--json"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        return {"plan": f"medkor plan failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"}
    memory = json.loads(done.stdout)["memory"]
    return {"plan_peak_gib": memory["peak"] / GIB, "plan_fits": memory["fits"]}


def train_steps(paths: dict, policy: str, args: argparse.Namespace, steps: int, *, sync_from: Optional[int] = None,
                fsdp: bool = False, keep: Optional[dict] = None) -> dict:
    import torch
    from lightning.pytorch import Trainer

    from medkor.callbacks import NonFiniteGuard
    from medkor.model import MedGemmaModule
    from medkor.model.loading import text_config
    from medkor.model.throughput import flops_per_token, peak_tflops_for

    result = _plan_peak(paths, policy, args, args.workdir / "plans", fsdp)
    if result.get("plan_fits") is False and not args.tiny:
        return {**result, "skipped": "the plan predicts more memory than the device has"}
    torch.manual_seed(0)
    module = MedGemmaModule(**module_args(paths, policy, args, fsdp))
    strategy: Any = "auto"
    if fsdp:
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer

        strategy = FSDPStrategy(sharding_strategy="FULL_SHARD", auto_wrap_policy={Gemma3DecoderLayer},
                                activation_checkpointing_policy={Gemma3DecoderLayer}, state_dict_type="full")
    clock = _step_clock(sync_from)
    trainer = Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, strategy=strategy,
                      precision="bf16-mixed", max_steps=steps, callbacks=[NonFiniteGuard(), clock], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0)
    vocab = len(module.tokenizer)
    try:
        trainer.fit(module, train_dataloaders=_batches(vocab, args.tokens, steps, args.device == "cuda"))
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode(0)
    seconds = clock.seconds()[2:] or clock.seconds()
    tokens_per_s = args.tokens * len(seconds) / sum(seconds)
    model = module.model
    config = text_config(module.hf_model)
    head = config.hidden_size * vocab
    layers = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and "vision" not in n)
    peak_tflops = peak_tflops_for(torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu"))
    mfu = None
    if peak_tflops:
        mfu = tokens_per_s * flops_per_token(config, layers + head, args.tokens) / (peak_tflops * 1e12)
    result.update(steps=trainer.global_step, step_seconds=[round(s, 4) for s in clock.seconds()],
                  tokens_per_s=tokens_per_s, mfu=mfu)
    if torch.cuda.is_available():
        result["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        if "plan_peak_gib" in result:
            result["plan_over_measured"] = result["plan_peak_gib"] / result["peak_gib"]
    if keep is not None:
        keep["module"] = module
    return result


# ---- the loss step ---------------------------------------------------------------------------------------------

def loss_step(args: argparse.Namespace) -> dict:
    import torch

    from medkor.model.loss import cce_installed, naive_cross_entropy, next_token_loss

    tokens, vocab, hidden = (256, 2000, 64) if args.tiny else (4096, 272_896, 2560)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(1, tokens + 1, hidden, device=device, generator=generator).requires_grad_(True)
    w = (torch.randn(vocab, hidden, device=device, generator=generator) * 0.02).requires_grad_(True)
    labels = torch.randint(0, vocab, (1, tokens + 1), device=device, generator=generator)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "fused": lambda: next_token_loss(h, w, labels, 512, None, "torch")[0],
        "naive": lambda: naive_cross_entropy(h @ w.T, labels),
    }
    if cce_installed() and device.type == "cuda":
        variants["cce"] = lambda: next_token_loss(h, w, labels, 512, None, "cce")[0]
    out: dict[str, Any] = {"shape": f"{tokens} x {vocab} x {hidden}", "cce": "cce" in variants or "not installed"}
    for name, loss_of in variants.items():
        times, peak, value = [], None, None
        for attempt in range(4):
            h.grad = w.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = loss_of()
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / GIB
            if attempt:  # the first is a warm-up
                times.append(time.perf_counter() - start)
            value = float(loss.detach())
        out[name] = {"ms": 1000 * min(times), "peak_gib": peak, "loss": value}
    return out


# ---- KorMedMCQA --------------------------------------------------------------------------------------------------

def synthetic_kormedmcqa(folder: Path, counts: dict[str, int]) -> Path:
    """Questions in the hub schema, each distinct: `<subset>/test.jsonl`."""
    import random

    rng = random.Random(0)
    for subset, count in counts.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        with open(folder / subset / "test.jsonl", "w", encoding="utf-8") as handle:
            for i in range(count):
                record = {"subject": subset, "year": 2024, "period": 1, "q_number": i + 1,
                          "question": f"{subset} 합성 문항 {i + 1}: 다음 중 환자 {rng.randint(20, 90)}세에게 가장 적절한 처치는?",
                          **{letter: f"선택지 {letter}{rng.randint(0, 10**6)}" for letter in "ABCDE"},
                          "answer": rng.randint(1, 5)}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return folder


def kormedmcqa(args: argparse.Namespace, kept: dict) -> dict:
    import torch

    from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator

    module = kept.get("module")
    if module is None:
        raise RuntimeError("no trained model (the embeddings+lora steps did not run)")
    counts = {k: max(2, v // 100) for k, v in KORMEDMCQA_TEST.items()} if args.tiny else KORMEDMCQA_TEST
    source = synthetic_kormedmcqa(args.workdir / "kormedmcqa", counts)
    evaluator = KorMedMCQAEvaluator(EvalSettings(source=str(source), batch_size=args.eval_batch))
    start = time.perf_counter()
    evaluator.encoded(module.tokenizer)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.autocast(args.device, dtype=torch.bfloat16):  # as under the trainer's bf16-mixed
        records = evaluator.evaluate(module.model, module.tokenizer)
    seconds = time.perf_counter() - start
    count = sum(counts.values())
    return {"questions": count, "scored": len(records), "encode_s": encode_s, "seconds": seconds,
            "questions_per_s": count / seconds}


# ---- driver --------------------------------------------------------------------------------------------------------

def _line(name: str, value: dict) -> str:
    if "error" in value:
        return f"{name}: FAILED {value['error']}"
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in value.items() if k != "step_seconds"}
    return f"{name}: " + ", ".join(f"{k} {v}" for k, v in shown.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny model and a few tokens (smoke test)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="tokenizers, model and synthetic questions (default /tmp/medkor-gpu-check; "
                        "a temporary folder with --tiny)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per step (default 4,096; 32 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per policy (default 8; 4 tiny)")
    parser.add_argument("--policies", nargs="+", default=None,
                        help="default: embeddings+lora new_embeddings lora full (the first two with --tiny)")
    parser.add_argument("--eval_batch", type=int, default=32)
    parser.add_argument("--sections", nargs="+", default=["steps", "sync", "loss", "kormedmcqa", "fsdp"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; use --device cpu --tiny for a smoke test", file=sys.stderr)
        return 2
    args.tokens = args.tokens or (32 if args.tiny else 4096)
    args.steps = args.steps or (3 if args.tiny else 8)
    args.policies = args.policies or (["embeddings+lora", "new_embeddings"] if args.tiny else
                                      ["embeddings+lora", "new_embeddings", "lora", "full"])
    sync_steps = 3 if args.tiny else 20
    temp = tempfile.TemporaryDirectory(prefix="medkor-gpu-check-") if args.tiny and args.workdir is None else None
    args.workdir = Path(temp.name) if temp else (args.workdir or Path("/tmp/medkor-gpu-check"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    results: dict[str, Any] = {"device": device_name, "tiny": args.tiny, "tokens": args.tokens, "steps": args.steps}
    kept: dict[str, Any] = {}
    failed = False
    began = time.perf_counter()

    def section(name: str, run: Callable[[], dict]) -> None:
        nonlocal failed
        start = time.perf_counter()
        try:
            value = run()
        except Exception as err:  # noqa: BLE001 - reported; the other sections still run
            failed = True
            value = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:400]}"}
            traceback.print_exc(limit=-4)
        value["section_s"] = time.perf_counter() - start
        results[name] = value
        print(_line(name, value), flush=True)

    section("setup", lambda: setup(args))
    paths = results["setup"]
    if "error" not in paths:
        if "steps" in args.sections:
            policies = list(dict.fromkeys(["embeddings+lora", *args.policies]))
            for policy in policies:
                section(f"steps/{policy}", lambda p=policy: train_steps(
                    paths, p, args, args.steps, keep=kept if p == "embeddings+lora" else None))
        if "kormedmcqa" in args.sections:
            section("kormedmcqa", lambda: kormedmcqa(args, kept))
        kept.clear()
        if "sync" in args.sections:
            section("sync", lambda: train_steps(paths, "embeddings+lora", args, 2 + sync_steps, sync_from=2))
        if "fsdp" in args.sections:
            if args.device == "cuda":
                section("fsdp", lambda: train_steps(paths, "embeddings+lora", args, args.steps, fsdp=True))
            else:
                results["fsdp"] = {"skipped": "FSDP needs CUDA here (tests/model/test_module_fsdp.py runs it on CPU)"}
                print(_line("fsdp", results["fsdp"]))
    if "loss" in args.sections:
        section("loss", lambda: loss_step(args))
    results["total_s"] = time.perf_counter() - began
    print(f"total {results['total_s']:.1f} s on {device_name}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    else:
        print(json.dumps(results, ensure_ascii=False))
    if temp:
        temp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
