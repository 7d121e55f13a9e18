"""Step-0 quality of a grown model: held-out bits per character per `new_token_init`.

1. A small Gemma 3 (the demo model's configuration, narrowed by `--layers`,
   `--hidden`, `--intermediate`; random init) is trained on Korean text with the base
   tokenizer (`trainable: full`), then saved as a checkpoint with it.
2. For each `new_token_init` the checkpoint is grown to the extended tokenizer by
   `MedGemmaModule` (the path `medkor fit` takes) and scored at step 0, then trained
   with `trainable: new_embeddings` (old rows frozen) and scored again.
3. Everything is scored on the same held-out texts in bits per character
   (`medkor.model.bits_per_char`), so the base and extended tokenizers compare.

Training runs through a Lightning Trainer on packed rows (`medkor.data.packing`,
`medkor.data.collate`), every init from the same seed and the same batches.

    PYTHONPATH=. python benchmarks/bench_init.py                      # demo model, data, tokenizers
    PYTHONPATH=. python benchmarks/bench_init.py --base-steps 200 --steps 50   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "medkor" / "assets" / "demo"
INITS = ("subword_mean", "mean", "random")


def read_texts(path: Path, field: str = "text") -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                record = json.loads(line)
                if not isinstance(record.get(field), str):
                    raise SystemExit(f"{path}:{n}: no string field {field!r}")
                texts.append(record[field])
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


def packed_loader(tokenizer, texts: list[str], max_length: int, batch_size: int, seed: int):
    """Documents `<bos> text <eos>` packed into rows of `max_length`, shuffled by `seed`."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from medkor.data.collate import Collator
    from medkor.data.packing import Packer

    docs = [[tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    packer = Packer(max_length)
    values = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs])
    chunks = list(packer.add(values, np.array([len(d) for d in docs]))) + list(packer.finish())
    rows = []
    for chunk in chunks:
        for i in range(len(chunk)):
            ids = chunk.values[chunk.offsets[i] : chunk.offsets[i + 1]]
            starts = chunk.starts[chunk.starts_offsets[i] : chunk.starts_offsets[i + 1]]
            rows.append((ids, starts))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=True, generator=generator,
                      collate_fn=Collator(tokenizer.pad_token_id))


def train(module, loader, steps: int) -> float:
    """`steps` optimizer steps of `module` under a CPU Trainer; returns seconds."""
    from lightning.pytorch import Trainer

    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, deterministic=True)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def save_small_base(folder: Path, model_dir: Path, layers: int, hidden: int, intermediate: int, seed: int) -> Path:
    """A random-init Gemma 3 with `model_dir`'s configuration and tokenizer, narrowed to the given sizes."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Gemma3ForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    heads = max(1, hidden // config.head_dim)
    config.update({"num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": intermediate,
                   "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2),
                   "layer_types": config.layer_types[-layers:]})
    torch.manual_seed(seed)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO / "tiny-gemma3", help="architecture + base tokenizer")
    parser.add_argument("--extended", type=Path, default=DEMO / "tokenizer-extended", help="extended tokenizer")
    parser.add_argument("--train", type=Path, default=DEMO / "data" / "train.jsonl")
    parser.add_argument("--heldout", type=Path, default=DEMO / "data" / "validation.jsonl")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=256)
    parser.add_argument("--base-steps", type=int, default=600, help="optimizer steps of the base model")
    parser.add_argument("--base-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=300, help="new_embeddings steps per init")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the new rows")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import torch
    from lightning.pytorch import seed_everything
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    from medkor.model import MedGemmaModule
    from medkor.model.bits_per_char import bits_per_character

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_texts, heldout = read_texts(args.train), read_texts(args.heldout)
    base_tok = AutoTokenizer.from_pretrained(args.model)
    ext_tok = AutoTokenizer.from_pretrained(args.extended)
    results: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "inits": {}}

    with tempfile.TemporaryDirectory() as tmp:
        start = save_small_base(Path(tmp) / "start", args.model, args.layers, args.hidden, args.intermediate,
                                args.seed)
        seed_everything(args.seed, verbose=False)
        base = MedGemmaModule(str(start), trainable="full", learning_rate=args.base_lr, weight_decay=0.01,
                              warmup_steps=args.base_steps // 20, min_learning_rate=args.base_lr / 10)
        seconds = train(base, packed_loader(base_tok, train_texts, args.max_length, args.batch_size, args.seed),
                        args.base_steps)
        base_folder = Path(tmp) / "base"
        base.hf_model.save_pretrained(base_folder)
        base_tok.save_pretrained(base_folder)
        scored = bits_per_character(base.hf_model, base_tok, heldout)
        results["base"] = {"bpc": scored.bpc, "tokens_per_1k_chars": scored.tokens_per_1k_chars,
                           "train_seconds": seconds}
        n_params = sum(p.numel() for p in base.model.parameters())
        print(f"base ({n_params:,} parameters): {args.base_steps} steps in {seconds:.0f} s, "
              f"held-out {scored.bpc:.4f} bits/char "
              f"({scored.tokens_per_1k_chars:.1f} tokens / 1k chars)", flush=True)
        del base

        loader_seed = args.seed + 1
        for init in args.inits:
            seed_everything(args.seed, verbose=False)
            grown = MedGemmaModule(str(base_folder), str(args.extended), new_token_init=init,
                                   trainable="new_embeddings", learning_rate=args.lr, weight_decay=0.0,
                                   warmup_steps=args.steps // 20, min_learning_rate=args.lr / 10)
            step0 = bits_per_character(grown.hf_model, ext_tok, heldout)
            seconds = train(grown, packed_loader(ext_tok, train_texts, args.max_length, args.batch_size,
                                                 loader_seed), args.steps)
            after = bits_per_character(grown.hf_model, ext_tok, heldout)
            results["inits"][init] = {"step0_bpc": step0.bpc, "trained_bpc": after.bpc,
                                      "tokens_per_1k_chars": step0.tokens_per_1k_chars, "train_seconds": seconds}
            print(f"{init}: step 0 {step0.bpc:.4f}, after {args.steps} steps {after.bpc:.4f} bits/char "
                  f"({seconds:.0f} s)", flush=True)

    base_bpc = results["base"]["bpc"]
    print(f"\n| init | step 0 bits/char | vs base | after {args.steps} new_embeddings steps | vs base |")
    print("|---|---|---|---|---|")
    print(f"| base model, base tokenizer | {base_bpc:.4f} | 1.000x | - | - |")
    for init, r in results["inits"].items():
        print(f"| `{init}` | {r['step0_bpc']:.4f} | {r['step0_bpc'] / base_bpc:.3f}x | "
              f"{r['trained_bpc']:.4f} | {r['trained_bpc'] / base_bpc:.3f}x |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
