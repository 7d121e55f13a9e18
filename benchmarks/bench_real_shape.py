"""MedGemma-4B's real shape on CPU: two optimizer steps through `MedGemmaModule`, measured against `medkor plan`.

What runs (each part in its own process, so each peak is its own):
1. `make`: a synthetic Gemma-3-style base tokenizer of 262,145 entries (special and byte
   tokens, Latin merge chains up to 262,144 ids, then `<image_soft_token>` as id 262,144), extended by
   10,698 merges to 272,843 tokens with `medkor.vocab.extend.grow_bpe`; a random-init
   `Gemma3ForConditionalGeneration` with MedGemma-4B's config (`--layers` decoder
   layers, 34 for the whole model) in bfloat16, saved with the base tokenizer.
2. `medkor plan --json` on a run config of exactly the set-up trained below.
3. `train`: `MedGemmaModule` (`trainable: embeddings+lora`, r=64, gradient
   checkpointing, `torch_dtype: bfloat16`, fused loss `torch`, chunk 512) loads the
   folder, grows the embedding to the extended tokenizer (subword means), and a
   Lightning Trainer (`accelerator: cpu`, `precision: bf16-mixed`, NonFiniteGuard)
   takes 2 optimizer steps of 1 x 512 tokens. Peak resident
   memory of the two steps: the process's high-water mark reset (/proc/self/clear_refs)
   after the model is built, minus its resident memory before the model was built
   (imports: the plan's CPU prediction has no runtime term). Wall time of the fit.

The prediction holds when |plan - measured| / measured <= 15 %.

    PYTHONPATH=. python benchmarks/bench_real_shape.py --layers 1           # develop (about 19 GB)
    PYTHONPATH=. python benchmarks/bench_real_shape.py --layers 34          # the whole model (about 27 GB)
    PYTHONPATH=. python benchmarks/bench_real_shape.py --fit_available      # the most layers MemAvailable allows
    PYTHONPATH=. python benchmarks/bench_real_shape.py --layers 1 --trainable lora   # another policy

Folders are kept under --workdir (default /tmp/medkor-real-shape) and rebuilt when the
layer count changes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_loss import _status_kib  # noqa: E402  (/proc/self/status, one reader for both benchmarks)

BASE_IDS = 262_144  # Gemma 3's vocabulary; <image_soft_token> makes 262,145 tokens
EXTENDED_TOKENS = 272_843
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPACE = "▁"

MEDGEMMA_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
    "initializer_range": 0.02, "mm_tokens_per_image": 256, "torch_dtype": "bfloat16",
    "text_config": {
        "model_type": "gemma3_text", "vocab_size": 262208, "hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131072, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "rope_theta": 1000000.0, "sliding_window": 1024, "sliding_window_pattern": 6, "attention_bias": False,
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
    },
    "vision_config": {
        "model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
        "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False,
    },
}


def _chains():
    """Latin merge chains in order: (token, (left, right)), plain and word-initial."""
    for length in itertools.count(1):
        for chars in itertools.product(LETTERS, repeat=length):
            word = "".join(chars)
            yield word, (word[:-1], word[-1])
            yield SPACE + word, (SPACE + word[:-1], word[-1])


def make_tokenizers(base_dir: Path, ext_dir: Path) -> None:
    """A 262,145-token Gemma-style base and its 272,843-token extension (merges inside the BPE)."""
    from transformers import AutoTokenizer

    from medkor.vocab.bpe_model import BpeModel
    from medkor.vocab.extend import grow_bpe
    from medkor.vocab.merges import LearnedMerges
    from medkor.vocab.subword import gemma_style_layout, save_gemma_style

    vocab, merges = gemma_style_layout({}, [])
    chains = _chains()
    for token, pair in chains:
        if len(vocab) >= BASE_IDS:
            break
        if token not in vocab and (len(token) == 1 or pair[0] in vocab) and token != SPACE:
            vocab[token] = len(vocab)
            if len(token) > 1 and pair[0]:
                merges.append(pair)
    # As in Gemma 3's own file: <image_soft_token> is id 262,144 in `added_tokens` only, not in
    # the BPE's vocabulary; the extension must keep it there and number new tokens after it.
    save_gemma_style(vocab, merges, base_dir)
    base = AutoTokenizer.from_pretrained(base_dir)
    base.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", "<image_soft_token>"]})
    base.save_pretrained(base_dir)
    base = AutoTokenizer.from_pretrained(base_dir)
    model = BpeModel.from_json((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
    learned = LearnedMerges()
    for token, pair in chains:  # the chains continue where the base stopped
        if len(learned.tokens) >= EXTENDED_TOKENS - len(base):
            break
        if token not in model.vocab and (pair[0] in model.vocab or pair[0] in learned.sources):
            learned.tokens.append(token)
            learned.merges.append(pair)
            learned.sources[token] = "merge"
    grown = grow_bpe(model, learned)
    base.save_pretrained(ext_dir)
    (ext_dir / "tokenizer.json").write_text(grown.model.to_json(), encoding="utf-8")
    sizes = len(base), len(AutoTokenizer.from_pretrained(ext_dir))
    if sizes != (BASE_IDS + 1, EXTENDED_TOKENS):
        raise RuntimeError(f"synthetic tokenizers have {sizes} tokens, not {(BASE_IDS + 1, EXTENDED_TOKENS)}")


def make_model(model_dir: Path, base_dir: Path, layers: int) -> None:
    """Random-init MedGemma-4B-shaped model in bfloat16 with `layers` decoder layers, saved with the base tokenizer."""
    import torch
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    spec = json.loads(json.dumps(MEDGEMMA_4B))
    spec["text_config"]["num_hidden_layers"] = layers
    config = Gemma3Config(**{k: v for k, v in spec.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = Gemma3ForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(model_dir)


def stage_make(workdir: Path, layers: Optional[int]) -> dict:
    """Tokenizers (once) and the model of `layers` decoder layers (none for None)."""
    start = time.perf_counter()
    base, ext, model = workdir / "base-tokenizer", workdir / "extended-tokenizer", workdir / f"model-{layers}"
    if not (ext / "tokenizer.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(ext, ignore_errors=True)
        make_tokenizers(base, ext)
    if layers is not None and not (model / "config.json").is_file():
        for old in workdir.glob("model-*"):  # one model at a time: they are GBs
            shutil.rmtree(old)
        make_model(model, base, layers)
    return {"seconds": time.perf_counter() - start}


def plan_folder(workdir: Path, layers: int) -> Path:
    """config.json of `layers` decoder layers and the base tokenizer, no weights: all `medkor plan` reads."""
    folder = workdir / f"plan-{layers}"
    folder.mkdir(exist_ok=True)
    spec = json.loads(json.dumps(MEDGEMMA_4B))
    spec["text_config"]["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    for item in (workdir / "base-tokenizer").iterdir():
        shutil.copy(item, folder / item.name)
    return folder


def run_config(workdir: Path, model: Path, tokens: int, trainable: str = "embeddings+lora") -> Path:
    """The run config of the trained set-up, for `medkor plan`."""
    import yaml

    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed", "max_steps": 2,
                    "accumulate_grad_batches": 1,
                    "callbacks": [{"class_path": "medkor.callbacks.NonFiniteGuard"}]},
        "model": {"model_name_or_path": str(model),
                  "tokenizer_path": str(workdir / "extended-tokenizer"), "trainable": trainable,
                  "lora": {"r": 64, "alpha": 128, "dropout": 0.05}, "gradient_checkpointing": True,
                  "torch_dtype": "bfloat16", "loss_impl": "torch", "loss_chunk_size": 512},
        "data": {"data_dir": str(data_dir), "batch_size": 1, "max_length": tokens},
    }
    path = workdir / f"run-{model.name}-{trainable}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def stage_train(workdir: Path, layers: int, tokens: int, threads: int, trainable: str) -> dict:
    """Build through MedGemmaModule and take 2 optimizer steps; memory and time as JSON."""
    import torch

    torch.set_num_threads(threads)
    rss_start = _status_kib("VmRSS:")
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from medkor.callbacks import NonFiniteGuard
    from medkor.model import MedGemmaModule

    rss_imports = _status_kib("VmRSS:")
    module = MedGemmaModule(
        model_name_or_path=str(workdir / f"model-{layers}"), tokenizer_path=str(workdir / "extended-tokenizer"),
        trainable=trainable, lora={"r": 64, "alpha": 128, "dropout": 0.05}, gradient_checkpointing=True,
        torch_dtype="bfloat16", loss_impl="torch", loss_chunk_size=512, learning_rate=1e-4,
    )
    start = time.perf_counter()
    module.configure_model()
    build_seconds = time.perf_counter() - start
    rss_built = _status_kib("VmRSS:")
    vocab = len(module.tokenizer)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(3, vocab, (1, tokens), generator=generator)
        batches.append({"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids),
                        "position_ids": torch.arange(tokens).unsqueeze(0)})
    loader = DataLoader(batches, batch_size=None)
    trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=2,
                      callbacks=[NonFiniteGuard()], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    Path("/proc/self/clear_refs").write_text("5")  # high-water mark from here: the training steps only
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    fit_seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM:")
    return {
        "layers": layers, "tokens": tokens, "threads": threads, "trainable": trainable, "vocab": vocab,
        "rows": module.embedding_plan.rows_after, "summary": module.trainable_summary,
        "build_seconds": build_seconds, "fit_seconds": fit_seconds, "steps": trainer.global_step,
        "rss_start_mib": rss_start / 1024, "rss_imports_mib": rss_imports / 1024, "rss_built_mib": rss_built / 1024,
        "peak_fit_mib": peak / 1024, "peak_rise_mib": (peak - rss_imports) / 1024,
        "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "weights_finite": all(torch.isfinite(p).all().item() for p in module.model.parameters() if p.requires_grad),
    }


def _child(stage: str, args: argparse.Namespace, timed: bool = False) -> dict:
    command = [sys.executable, __file__, "--stage", stage, "--layers", str(args.layers), "--tokens", str(args.tokens),
               "--workdir", str(args.workdir), "--threads", str(args.threads), "--trainable", args.trainable]
    if timed and Path("/usr/bin/time").exists():
        command = ["/usr/bin/time", "-v", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if timed:
        for line in done.stderr.splitlines():
            if "Maximum resident set size" in line:
                result["time_v_max_rss_mib"] = int(line.split()[-1]) / 1024
            if "Elapsed (wall clock)" in line:
                result["time_v_wall"] = line.split()[-1]
    return result


def plan(args: argparse.Namespace, model: Path) -> dict:
    """`medkor plan --json` of the trained set-up with the model folder `model`."""
    config = run_config(args.workdir, model, args.tokens, args.trainable)
    medkor = [sys.executable, "-m", "medkor", "plan", "--config", str(config), "--json"]
    done = subprocess.run(medkor, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"medkor plan failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=34, help="decoder layers (MedGemma-4B: 34)")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per row (one row per micro-batch)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    ap.add_argument("--trainable", default="embeddings+lora", help="the trainable policy (default embeddings+lora)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/medkor-real-shape"))
    ap.add_argument("--fit_available", action="store_true",
                    help="use the most layers (up to 34) whose planned peak fits in MemAvailable less 2.5 GB "
                    "(imports and tokenizers take about 1.3 GB beside the planned tensors)")
    ap.add_argument("--plan_folder", type=Path, default=None,
                    help="only write what `medkor plan` reads into this folder: the tokenizers and plan-34 "
                    "(MedGemma-4B's config.json with the base tokenizer), for docs/memory.md")
    ap.add_argument("--stage", choices=["make_tokenizers", "make", "train"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plan_folder is not None:
        args.plan_folder.mkdir(parents=True, exist_ok=True)
        stage_make(args.plan_folder, None)
        print(plan_folder(args.plan_folder, 34))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.stage == "make_tokenizers":
        print(json.dumps(stage_make(args.workdir, None)))
        return 0
    if args.stage == "make":
        print(json.dumps(stage_make(args.workdir, args.layers)))
        return 0
    if args.stage == "train":
        print(json.dumps(stage_train(args.workdir, args.layers, args.tokens, args.threads, args.trainable)))
        return 0
    if args.fit_available:  # the plan's peak is linear in layers: the largest count under MemAvailable
        budget = mem_available() - int(2.5e9)
        args.layers = 1
        _child("make_tokenizers", args)
        one = plan(args, plan_folder(args.workdir, 1))["memory"]["peak"]
        per_layer = plan(args, plan_folder(args.workdir, 2))["memory"]["peak"] - one
        print(f"MemAvailable less 2.5 GB: {budget / 1e9:.1f} GB; planned {one / 1e9:.2f} GB + "
              f"{per_layer / 1e9:.3f} GB per layer", file=sys.stderr)
        if budget < one:
            print("not even one decoder layer fits now; try again when more memory is free", file=sys.stderr)
            return 2
        args.layers = min(34, 1 + int((budget - one) // per_layer))
        print(f"-> {args.layers} layers", file=sys.stderr)
    made = _child("make", args)
    planned = plan(args, args.workdir / f"model-{args.layers}")
    measured = _child("train", args, timed=True)
    predicted = planned["memory"]["peak"]
    rise = measured["peak_rise_mib"] * 2**20
    report = {
        "layers": args.layers, "tokens": args.tokens, "trainable": args.trainable, "make_seconds": made["seconds"],
        "plan_peak_gb": predicted / 1e9, "plan_peak_at": planned["memory"]["peak_at"],
        "plan_moments_gb": {k: v / 1e9 for k, v in planned["memory"]["moments"].items()},
        "measured_peak_rise_gb": rise / 1e9, "error": (predicted - rise) / rise,
        "within_15_percent": abs(predicted - rise) <= 0.15 * rise,
        "plan_params": {k: planned["model"][k] for k in ("total_params", "trainable_params")},
        "measured": measured,
    }
    print(json.dumps(report, indent=1))
    return 0 if report["within_15_percent"] else 1


if __name__ == "__main__":
    sys.exit(main())
