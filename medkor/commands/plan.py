"""`medkor plan --config FILE [overrides]`: parameters and predicted memory per device, without weights.

Reads the same config files and `--section.key value` overrides as `medkor fit`,
builds the configured model on the meta device (a model folder with `config.json`
and the tokenizer files is enough; no weight is read, no Trainer is made) and prints
parameter counts, embedding growth, LoRA modules, FSDP units and the predicted peak
memory per device by term (`medkor.model.plan_memory`). `--json` for machines,
`--markdown` for `docs/memory.md`. A plan that does not fit the device prints a
warning with the options to add that would, each figure the plan re-made with exactly
those options (exit status 0: the plan itself succeeded; `--strict` exits 3 instead,
and scripts may read `memory.fits` from `--json`). A set-up `medkor fit` refuses at
start (`medkor.model.module.fsdp_problem`) is said in one warning line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from medkor.model.plan import ModelFacts
    from medkor.model.plan_memory import MemoryPlan
    from medkor.model.plan_setup import PlanInputs

USAGE = ("medkor plan --config FILE [--config FILE ...] [--json | --markdown] [--device_memory GB] [--devices N] "
         "[--eval_tokens N] [--strict] [--model.KEY VALUE] [--data.KEY VALUE] [--trainer.KEY VALUE]")


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
    parser.add_argument("--strict", action="store_true",
                        help="exit status 3 when the predicted peak exceeds the device memory (default: 0, with a "
                        "warning; --json's memory.fits says the same)")
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
    from medkor.model.plan_report import json_report, text_lines

    planner = Planner(config_args, args)
    try:
        inputs, facts, memory = planner.plan()
        if args.markdown:
            from medkor.model.plan_markdown import markdown_report

            print(markdown_report(inputs, args.config))
            return 0
    except ConfigError as err:
        print(f"medkor plan: error: {one_line(err)}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"medkor plan: error: {one_line(err)}", file=sys.stderr)
        return 1
    refused = fit_refusal(inputs)
    tips = suggestions(planner, inputs, facts, memory) if not memory.fits else []
    notes = inputs.assumptions + planner.warnings
    if args.json:
        report = json_report(facts, inputs.setup, memory, tips, notes)
        report["fit_refuses"] = refused
        print(json.dumps(report, ensure_ascii=False))
    else:
        print("\n".join(text_lines(facts, inputs.setup, memory, tips, notes)))
    for warning in planner.warnings:
        print(f"medkor plan: warning: {warning}", file=sys.stderr)
    if refused:
        print(f"medkor plan: warning: medkor fit refuses this set-up at start: {refused}", file=sys.stderr)
    if not memory.fits:
        print(f"medkor plan: warning: predicted peak {memory.peak / 1e9:,.2f} GB per device exceeds "
              f"{memory.device_memory / 1e9:,.2f} GB", file=sys.stderr)
        return 3 if args.strict else 0
    return 0


class Planner:
    """Plans of one command line, with options added: parse, read the set-up, build facts (reused when the
    module options that decide shapes are the same), predict memory."""

    def __init__(self, config_args: list[str], args: argparse.Namespace) -> None:
        self.config_args = config_args
        self.args = args
        self.facts: dict[str, "ModelFacts"] = {}
        self.warnings: list[str] = []

    def plan(self, extra: Sequence[str] = ()) -> tuple:
        from medkor.lightning_cli import parse_run_config
        from medkor.model.plan_memory import plan_memory
        from medkor.model.plan_setup import plan_inputs

        # devices named by the added options win over --devices, as they would on the fit command line
        devices = None if "--trainer.devices" in extra else self.args.devices
        config = parse_run_config(self.config_args + list(extra))
        inputs = plan_inputs(config, devices=devices, device_memory_gb=self.args.device_memory,
                             eval_tokens=self.args.eval_tokens)
        base_tokenizer = _check_model_files(inputs.model, self.warnings if not extra else [])
        key = json.dumps([{k: inputs.model.get(k) for k in MODEL_KEYS}, inputs.fsdp_classes], default=str)
        if key not in self.facts:
            self.facts[key] = build_facts(inputs.model, inputs.fsdp_classes, base_tokenizer)
        facts = self.facts[key]
        return inputs, facts, plan_memory(facts, inputs.setup)


def fit_refusal(inputs: "PlanInputs") -> Optional[str]:
    """What `medkor fit` would refuse at start for this set-up (the module's own FSDP check), or None."""
    if inputs.setup.strategy != "fsdp":
        return None
    from types import SimpleNamespace

    from medkor.model.module import fsdp_problem

    return fsdp_problem(SimpleNamespace(**inputs.model), training=True)


def suggestions(planner: Planner, inputs: "PlanInputs", facts: "ModelFacts", memory: "MemoryPlan") -> list:
    """Options that lower the peak, each planned again with exactly those options added to the command line.

    (text naming the options, its plan), those that fit first, then the lowest. A set-up fit would
    refuse (FSDP with options it cannot train) is never suggested.
    """
    from dataclasses import replace

    from medkor.model.plan_memory import plan_memory

    s, m = inputs.setup, inputs.model
    tries: list[tuple[list[str], str]] = []
    if not s.gradient_checkpointing:
        tries.append((["--model.gradient_checkpointing", "true"], "layers recomputed in backward"))
    masked = any(p.policy == "new_embeddings" for p in facts.phases)
    if s.loss_impl == "torch" and s.accumulate > 1 and facts.head_trainable and s.strategy == "single" and not masked:
        tries.append((["--model.loss_impl", "torch_recompute"], "no second head-sized gradient while accumulating"))
    batch = s.micro_batch
    while batch > 1:
        batch //= 2
        steps = max(1, s.accumulate * s.micro_batch // batch)
        tries.append((["--data.batch_size", str(batch), "--trainer.accumulate_grad_batches", str(steps)],
                      "the same rows per optimizer step"))
    frozen = facts.trainable_params < facts.total_params
    if frozen and m.get("torch_dtype") == "float32" and s.strategy != "fsdp":
        tries.append((["--model.torch_dtype", "bfloat16"], "frozen weights in bfloat16, trainable ones stay float32"))
    trainable = m.get("trainable")
    if isinstance(trainable, str):
        extended = facts.embedding.extended
        if extended and trainable not in ("embeddings+lora", "lora", "new_embeddings", "embeddings"):
            tries.append((["--model.trainable", "embeddings+lora"], "adapters and the embedding, new rows included"))
        if trainable != "lora":
            why = ("adapters only; the embedding is frozen, so the tokenizer's new rows would NOT train "
                   "(prefer embeddings+lora)" if extended else "adapters only, embedding frozen")
            tries.append((["--model.trainable", "lora"], why))
    if s.strategy != "fsdp" and s.device == "cuda":
        fsdp = ["--config", "configs/strategies/fsdp.yaml"] + (["--trainer.devices", "8"] if s.devices == 1 else [])
        tries.append((fsdp, "FULL_SHARD, decoder layers checkpointed"))
    out = []
    for extra, why in tries:
        try:
            alt_inputs, _, alt = planner.plan(extra)
        except Exception:  # an option this config cannot take is no advice
            continue
        if fit_refusal(alt_inputs) is None:
            out.append((f"{' '.join(extra)}  ({why})", alt, list(extra)))
    if memory.peak_at == "evaluation" and s.eval_batch > 1:
        # the callback's batch size lives in the config's callbacks list, which the command line cannot reach
        for batch in (s.eval_batch // 2, 1):
            alt = plan_memory(facts, replace(s, eval_batch=batch))
            out.append((f"KorMedMCQAEval init_args.batch_size: {batch} in the config's trainer.callbacks  "
                        "(fewer questions per evaluation pass)", alt, None))
            if alt.fits:
                break
    return sorted((item for item in out if item[1].peak < memory.peak), key=lambda item: (not item[1].fits, item[1].peak))


MODEL_KEYS = ("model_name_or_path", "tokenizer_path", "pad_vocab_to_multiple_of", "trainable", "lora",
              "torch_dtype", "attn_implementation", "trust_remote_code")


def build_facts(model: dict, fsdp_classes: list[str], base_tokenizer_path: Optional[str] = None) -> "ModelFacts":
    """`plan_model` with the module options that decide shapes."""
    from medkor.model.plan import plan_model

    kwargs = {k: model.get(k) for k in MODEL_KEYS}
    return plan_model(kwargs.pop("model_name_or_path"), kwargs.pop("tokenizer_path"), fsdp_classes=fsdp_classes,
                      base_tokenizer_path=base_tokenizer_path, **kwargs)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # one of them makes a tokenizer


def _check_model_files(model: dict, warnings: list[str]) -> Optional[str]:
    """The plan needs the checkpoint's config.json on disk (a folder or the hub cache), never its weights,
    and the training tokenizer where the config says it is.

    Returns the folder to read the checkpoint's tokenizer from where the model folder has none
    (`model.tokenizer_path`, said in `warnings`); a folder without tokenizer files and no
    `model.tokenizer_path` is an error."""
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
    folder = Path(path).expanduser()
    if not folder.is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    if not tokenizer:
        raise ConfigError(
            f"model.model_name_or_path {path!r} has config.json but no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
            "pass --model.tokenizer_path DIR (the training tokenizer's folder), or copy the checkpoint's "
            "tokenizer.json and tokenizer_config.json into it"
        )
    warnings.append(f"model.model_name_or_path {path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
                    f"the checkpoint's tokenizer is taken to be model.tokenizer_path {str(tokenizer)!r}, so no "
                    "embedding growth is planned; copy the checkpoint's tokenizer files there to plan an extension")
    return str(tokenizer)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "tokenizer_config.json"), str)
    except Exception:  # not shaped like a hub id: not in the cache
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
