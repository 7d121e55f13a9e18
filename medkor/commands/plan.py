"""`medkor plan --config FILE [overrides]`: parameters and predicted memory per device, without weights.

Reads the same config files and `--section.key value` overrides as `medkor fit`,
builds the configured model on the meta device (a model folder with `config.json`
and the tokenizer files is enough; no weight is read, no Trainer is made) and prints
parameter counts, embedding growth, LoRA modules, FSDP units and the predicted peak
memory per device by term (`medkor.model.plan_memory`). `--json` for machines,
`--markdown` for `docs/memory.md`. A plan that does not fit the device prints a
warning with the changes that would (exit status 0: the plan itself succeeded).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medkor.model.plan import ModelFacts

USAGE = ("medkor plan --config FILE [--config FILE ...] [--json | --markdown] [--device_memory GB] [--devices N] "
         "[--eval_tokens N] [--model.KEY VALUE] [--data.KEY VALUE] [--trainer.KEY VALUE]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkor plan",
        usage=USAGE,
        allow_abbrev=False,
        description="Parameter counts and predicted peak memory per device of a run config, from the model's "
        "config.json and tokenizers alone (built on the meta device; seconds, no GPU, no weights). Other options "
        "(`--model.*`, `--data.*`, `--trainer.*`) are taken exactly as `medkor fit` takes them.",
    )
    parser.add_argument("--config", action="append", default=[], help="run config YAML (repeatable, as for fit)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object (bytes and counts) instead of text")
    out.add_argument("--markdown", action="store_true",
                     help="a memory report in Markdown, every trainable policy side by side (docs/memory.md)")
    parser.add_argument("--device_memory", type=float, default=None,
                        help="GB (10^9 bytes) per device; default: 80 GiB for GPUs (an 80 GB H100/A100), this "
                        "machine's RAM for accelerator: cpu")
    parser.add_argument("--devices", type=int, default=None,
                        help="GPUs per node, where the config says -1 or auto (default: this machine's, or 8)")
    parser.add_argument("--eval_tokens", type=int, default=512,
                        help="tokens per KorMedMCQA prompt row planned for the evaluation (default 512)")
    return parser


def main(argv: list[str]) -> int:
    if not argv:
        print(f"usage: {USAGE}\nmedkor plan: error: --config is required", file=sys.stderr)
        return 2
    args, rest = _parser().parse_known_args(argv)
    if not args.config and not any(a.startswith("--model.") for a in rest):
        print(f"usage: {USAGE}\nmedkor plan: error: --config is required", file=sys.stderr)
        return 2
    for name in ("device_memory", "devices", "eval_tokens"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"medkor plan: error: --{name} must be > 0, got {value:g}", file=sys.stderr)
            return 2
    import os
    import warnings

    # The plan reads config.json and tokenizer files only, from a folder or the local hub cache:
    # never a download, never a wait on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from medkor.checks import ConfigError, check_quickly
    from medkor.cli import one_line

    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes, not the plan's
    config_args = [x for c in args.config for x in ("--config", c)] + rest
    try:  # the config files and plain values, before Lightning is imported
        check_quickly(config_args, paths=False)
    except ConfigError as err:
        print(f"medkor plan: error: {one_line(err)}", file=sys.stderr)
        return 2
    from medkor.lightning_cli import parse_run_config
    from medkor.model.plan_setup import plan_inputs

    try:
        config = parse_run_config(config_args)
        inputs = plan_inputs(config, devices=args.devices, device_memory_gb=args.device_memory,
                             eval_tokens=args.eval_tokens)
        _check_model_files(inputs.model)
    except ConfigError as err:
        print(f"medkor plan: error: {one_line(err)}", file=sys.stderr)
        return 2
    from medkor.model.plan_memory import advice, plan_memory
    from medkor.model.plan_report import json_report, text_lines

    try:
        if args.markdown:
            from medkor.model.plan_markdown import markdown_report

            print(markdown_report(inputs, args.config))
            return 0
        facts = build_facts(inputs.model, inputs.fsdp_classes)
    except (OSError, ValueError) as err:
        print(f"medkor plan: error: {one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    memory = plan_memory(facts, inputs.setup)
    tips = []
    if not memory.fits:
        others = []
        if inputs.model.get("trainable") not in ("lora",) and isinstance(inputs.model.get("trainable"), str):
            lora = build_facts({**inputs.model, "trainable": "lora"}, inputs.fsdp_classes)
            others.append(("model.trainable: lora (adapters only, embedding frozen)", lora))
        tips = advice(facts, inputs.setup, others)
    if args.json:
        print(json.dumps(json_report(facts, inputs.setup, memory, tips, inputs.assumptions), ensure_ascii=False))
    else:
        print("\n".join(text_lines(facts, inputs.setup, memory, tips, inputs.assumptions)))
    if not memory.fits:
        print(f"medkor plan: warning: predicted peak {memory.peak / 1e9:,.1f} GB per device exceeds "
              f"{memory.device_memory / 1e9:,.1f} GB", file=sys.stderr)
    return 0


MODEL_KEYS = ("model_name_or_path", "tokenizer_path", "pad_vocab_to_multiple_of", "trainable", "lora",
              "torch_dtype", "attn_implementation", "trust_remote_code")


def build_facts(model: dict, fsdp_classes: list[str]) -> "ModelFacts":
    """`plan_model` with the module options that decide shapes."""
    from medkor.model.plan import plan_model

    kwargs = {k: model.get(k) for k in MODEL_KEYS}
    return plan_model(kwargs.pop("model_name_or_path"), kwargs.pop("tokenizer_path"), fsdp_classes=fsdp_classes,
                      **kwargs)


def _check_model_files(model: dict) -> None:
    """The plan needs the checkpoint's config.json on disk (a folder or the hub cache), never its weights,
    and the training tokenizer where the config says it is."""
    from pathlib import Path

    from medkor.checks import ConfigError, model_config_json

    tokenizer = model.get("tokenizer_path")
    if tokenizer and not Path(str(tokenizer)).expanduser().is_dir() and not _in_hub_cache(str(tokenizer)):
        where = "" if Path(str(tokenizer)).is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigError(
            f"model.tokenizer_path {str(tokenizer)!r}: no such folder{where} nor in the local hub cache; medkor plan "
            "reads local files only (`medkor extend-vocab --out DIR` writes a tokenizer folder)"
        )
    path = str(model.get("model_name_or_path"))
    if model_config_json(path) is None:
        raise ConfigError(
            f"model.model_name_or_path {path!r}: no config.json here or in the hub cache; medkor plan needs only "
            "config.json and the tokenizer files (e.g. huggingface-cli download google/medgemma-4b-it config.json "
            "tokenizer.json tokenizer_config.json special_tokens_map.json), or a local folder holding them"
        )


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "tokenizer_config.json"), str)
    except Exception:  # not shaped like a hub id: not in the cache
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
