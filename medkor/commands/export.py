"""`medkor export --config FILE [--ckpt_path PATH] --out DIR`: write a Hugging Face folder.

Builds the model exactly as `medkor fit` would from the same config files and
`--section.key value` overrides (checkpoint loaded, embeddings grown to the extended
tokenizer), loads a Lightning checkpoint if one is given, merges LoRA adapters and
saves safetensors, config and the tokenizer. Without `--ckpt_path` the freshly
extended model is written, so the extended base is prepared once and reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

USAGE = "medkor export --config FILE [--ckpt_path PATH] --out DIR [--overwrite] [--dtype DTYPE] [--model.KEY VALUE ...]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkor export",
        allow_abbrev=False,
        usage=USAGE,
        description="Write a Hugging Face folder (safetensors, config, tokenizer) from a run config and an "
        "optional Lightning checkpoint; LoRA adapters are merged. Other options (`--model.*`, ...) are "
        "passed to the config parser exactly as `medkor fit` takes them.",
    )
    parser.add_argument("--config", action="append", default=[], help="run config YAML (repeatable, as for fit)")
    parser.add_argument("--ckpt_path", default=None, help="Lightning checkpoint to load (full or trainable-only)")
    parser.add_argument("--out", required=True, help="folder to write; created if missing, refused if not empty")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out (only the files it wrote; others are kept)")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"],
        help="weight dtype of the export (default: the dtype the model trains in)",
    )
    return parser


def model_args(config: Any) -> dict[str, Any]:
    """Constructor arguments of MedGemmaModule from a parsed run config."""
    model = config.model
    model = model.as_dict() if hasattr(model, "as_dict") else dict(model)
    return model.get("init_args", model)  # subclass mode nests the arguments


def load_checkpoint(module: Any, path: str) -> None:
    """Load a Lightning checkpoint into `module` with the module's own strictness rules.

    The file is read with `torch.load(weights_only=True)` (tensors and plain values
    only, see `medkor.callbacks.checkpoint_io`): a bad or unsafe file raises a
    `ValueError` that names it and says why, and runs no code from it.
    """
    from medkor.callbacks.checkpoint_io import load_checkpoint_file

    checkpoint = load_checkpoint_file(path, map_location="cpu")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict'); pass a .ckpt from `medkor fit`")
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=module.strict_loading)


def weights_size(model: Any, dtype: Any = None) -> int:
    """Bytes the model's weights take on disk (shared tensors once), in `dtype` if given."""
    total = 0
    for param in model.parameters():
        itemsize = dtype.itemsize if dtype is not None and param.is_floating_point() else param.element_size()
        total += param.numel() * itemsize
    return total


def check_free_space(out: Path, needed: int) -> None:
    """Refuse before writing when the file system of `out` has clearly too little room."""
    import shutil

    from medkor.run.atomic import human_size
    from medkor.run.export_folder import ExportFolderError

    folder = out.parent if not out.exists() else out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ExportFolderError(
            f"--out {out}: the export needs about {human_size(needed)} and only {human_size(free)} is free on the "
            f"file system of {folder}; free space or choose --out on a larger disk")


def main(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(argv)
    if not args.config and not any(a.startswith("--model.") for a in rest):
        print(f"usage: {USAGE}\nmedkor export: error: --config is required", file=sys.stderr)
        return 2
    from medkor.run.export_folder import (
        ExportFolderError, check_export_target, discard_staging, publish_export, staging_folder,
    )
    from medkor.run.publish import no_space_left, no_space_message

    out = Path(args.out)
    try:  # before anything loads: a wrong folder or checkpoint costs nothing
        check_export_target(out, args.overwrite)
        if args.ckpt_path and not Path(args.ckpt_path).is_file():
            raise ExportFolderError(f"--ckpt_path {args.ckpt_path}: no such file")
    except ExportFolderError as err:
        print(f"medkor export: error: {err}", file=sys.stderr)
        return 2
    import torch

    from medkor.checks import ConfigError
    from medkor.cli import one_line
    from medkor.lightning_cli import parse_run_config
    from medkor.model import MedGemmaModule
    from medkor.model.export import export_folder

    staging = None
    try:
        config = parse_run_config([x for c in args.config for x in ("--config", c)] + rest)
        kwargs = model_args(config)
        if args.ckpt_path:  # a damaged checkpoint is refused before minutes of building the model
            from medkor.callbacks.checkpoint_io import verify_checkpoint_file

            verify_checkpoint_file(args.ckpt_path)
        print(f"medkor export: building the model of {', '.join(args.config) or 'the options'}"
              + (f" and loading {args.ckpt_path}" if args.ckpt_path else ""), file=sys.stderr, flush=True)
        module = MedGemmaModule(**kwargs)
        if args.ckpt_path:
            load_checkpoint(module, args.ckpt_path)
        dtype: Optional[torch.dtype] = getattr(torch, args.dtype) if args.dtype else None
        source = Path(kwargs["model_name_or_path"])
        check_free_space(out, weights_size(module.model, dtype))
        staging = staging_folder(out)
        try:
            export_folder(module.model, module.tokenizer, staging, dtype=dtype,
                          processor_source=source if source.is_dir() else None)
        except Exception as err:  # noqa: BLE001 - a full disk is reported whatever raised it (safetensors too)
            if no_space_left(err):
                discard_staging(staging)  # first, so that the free space reported is what is really there
                staging = None
                raise ExportFolderError(no_space_message(out, "the export")) from err
            raise
        files = publish_export(staging, out, args.overwrite)
        staging = None
    except (ConfigError, OSError, ValueError, RuntimeError) as err:
        print(f"medkor export: error: {one_line(err)}", file=sys.stderr)
        return 1
    finally:
        discard_staging(staging)  # an interrupted or failed export leaves no half-written folder
    size = sum((out / name).stat().st_size for name in files) / 2**20
    print(f"medkor export: wrote {out} ({len(files)} files, {size:.1f} MiB; {module.embedding_plan.rows_after} "
          f"embedding rows, {len(module.tokenizer)} tokens)")
    print(f"  load it with AutoModelForCausalLM.from_pretrained({str(out)!r}) or use it as model_name_or_path")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
